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
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from budget_plugins._decide import (
    Action,
    Decision,
    Denial,
    check_run_local,
    classify,
    effective_limits,
    find_denial,
    pressure,
)
from budget_plugins._errors import COST_DIMENSION, BudgetConfigError, BudgetExceeded, format_amount
from budget_plugins._events import BudgetEvent, EventHook, LoggingHook, emit
from budget_plugins._inprocess import RUN_WRITE_INTERVAL, SETTLE_DELAY, RunCounters, budget_limits, settler
from budget_plugins._ledger import (
    DEFAULT_LEASE_SECONDS,
    AsyncLedger,
    Grant,
    InMemoryLedger,
    Ledger,
    Scope,
    ScopeKey,
    Settlement,
    add_amounts,
)
from budget_plugins._policy import Budget, Ceiling, micros_to_usd
from budget_plugins._prefetch import Credit, headroom, prefetch_amounts
from budget_plugins._pricing import price_micros, price_tokens
from budget_plugins._usage import Request, ScopeUsage, TokenUsage

_DEFAULT_HOOKS: tuple[EventHook, ...] = (LoggingHook(),)

_NO_DIMENSIONS: frozenset[str] = frozenset()

_unwritten: weakref.WeakSet[Meter] = weakref.WeakSet()
_log = logging.getLogger("budget_plugins")


@atexit.register
def _write_unwritten_run_scopes() -> None:
    for meter in {*_unwritten, *settler.drain()}:
        try:
            meter.flush()
        except BaseException:  # best effort at exit: the ledger may be gone already
            _log.warning("could not write run scope %s at exit", meter.run_id)


_TOKEN_DIMENSIONS = frozenset({"input_tokens", "output_tokens", "total_tokens"})
_CALL_KINDS = frozenset({"model_call", "tool_call"})
_SETTLED_BY_USAGE = _TOKEN_DIMENSIONS | {COST_DIMENSION}

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
    settle: list[tuple[str, dict[str, int]]]
    denial: Denial | None
    views: list[ScopeUsage]
    local: bool
    ask_ledger: bool
    enforce: bool
    asked: Mapping[str, int]
    """What the shared scopes are asked to hold: the request's amounts, or more (prefetch)."""
    credit: Credit | None = None
    """The prefetched hold the request was drawn from, in process."""
    sent_at: float = 0.0
    """``time.monotonic()`` before a prefetching reservation was sent (its lease runs from then)."""


@dataclass(slots=True)
class Ticket:
    """A granted reservation for one call, to settle with ``commit`` or ``release``."""

    reservation_id: str
    """The ledger's idempotency key; empty for a call held only in process (``local``)."""
    request: Request
    decision: Decision
    model: str | None = None
    node: str | None = None
    call_id: str | None = None
    parent_call_id: str | None = None
    settled: bool = False
    local: bool = False
    """Held only in process (no shared scope limits it): its usage reaches the ledger later."""
    credit: Credit | None = None
    """The prefetched hold in the shared scopes that covers this call (``prefetch``)."""


class Meter:
    """Enforces one run's :class:`Budget` (and shared ceilings) through a ledger.

    Args:
        budget: The run's budget.
        ledger: Where usage is kept; a fresh :class:`InMemoryLedger` by default.
            Pass a shared ledger (in-memory or Redis) to share ceilings across runs.
            A remote ledger's ``prefetch`` (``RedisLedger(prefetch=16)``) lets a
            reservation in the shared scopes hold several calls' worth, drawn from
            in process by this meter's next calls of the same kind.
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
        "_clock",
        "_cost_limited",
        "_credits",
        "_express",
        "_failures",
        "_final_scope",
        "_input_floor",
        "_ledger",
        "_local",
        "_lock",
        "_owners",
        "_pending",
        "_prefetch",
        "_remote",
        "_room",
        "_run_checks",
        "_run_scope",
        "_run_unsynced",
        "_run_written",
        "_scopes",
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
        # Without one, a ledger of its own, made when a request first needs it (an
        # exclusive run scope without ceilings never does: it is counted in process).
        self._ledger: Ledger | None = ledger
        self._aledger: AsyncLedger | None = None
        self.tenant = tenant
        self.workflow = workflow
        self.run_id = run_id or uuid.uuid4().hex
        self.agent = agent
        self.provider = provider
        self.hooks: Sequence[EventHook] = tuple(hooks) if hooks is not None else _DEFAULT_HOOKS
        self.lease_seconds = lease_seconds
        self._remote = bool(getattr(ledger, "remote", False))
        self.defer_commits = self._remote if defer_commits is None else defer_commits
        # Prefetched holds (a remote ledger's `prefetch`): calls served from them in process.
        self._prefetch = int(getattr(ledger, "prefetch", 0) or 0) if self._remote and self.defer_commits else 0
        self._credits: dict[tuple[str, str | None], Credit] | None = None
        self._room: dict[str, int] | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._failures = 0
        # Created on first use: an idle run scope should cost little memory.
        self._pending: list[tuple[str, dict[str, int]]] | None = None
        self._input_floor: tuple[str, int] | dict[str, int] | None = None
        self._signalled: set[tuple[str, str]] | None = None
        self._shadow: dict[str, int] | None = None
        self.level: Action = "allow"
        self.exhausted: BudgetExceeded | None = None
        self.spent_micros = 0
        final_limits, run_limits = budget_limits(budget)
        if extra_limits:
            final_limits = {**final_limits, **extra_limits}
            run_limits = effective_limits(final_limits, budget.finalization_reserve, final=False)
        self.run_limits: Mapping[str, int] = final_limits
        self._final_scope = Scope("run", self.run_id, tenant or "", workflow or "", final_limits)
        self._run_scope = (
            self._final_scope
            if run_limits is final_limits
            else Scope("run", self.run_id, tenant or "", workflow or "", run_limits)
        )
        # An exclusive run scope is enforced in process (counters of its own); so
        # are the run scopes of enclosing meters that are exclusive. The ledger holds
        # the other scopes, and records the run scopes later (see flush).
        own = run_id is None if exclusive is None else exclusive
        self._local: RunCounters | None = RunCounters(self._lock) if own else None
        self._unsynced: dict[str, int] | None = None
        self._run_unsynced: dict[str, int] | None = None
        self._run_written = float("-inf")
        ceiling_scopes = [self._ceiling_scope(c) for c in ceilings]
        inherited: tuple[list[Scope], list[Scope]] = ([], [])
        owners: list[Meter] = [self] if own else []
        if parent is not None:
            owners += parent._owners
            inherited = (list(parent._scopes[0]), list(parent._scopes[1]))
        self._owners: tuple[Meter, ...] = tuple(owners)
        local_keys = {owner._final_scope.key for owner in owners}
        scopes: list[tuple[Scope, ...]] = []
        ledger_scopes: list[tuple[Scope, ...]] = []
        for first, above in ((self._run_scope, inherited[0]), (self._final_scope, inherited[1])):
            mine = [first, *ceiling_scopes]
            keys = {scope.key for scope in mine}
            every = (*mine, *(scope for scope in above if scope.key not in keys))
            if scopes and len(every) == len(scopes[0]) and all(a is b for a, b in zip(every, scopes[0], strict=True)):
                every = scopes[0]  # no finalization reserve: one tuple for both (an idle scope stays small)
            scopes.append(every)
            shared = tuple(scope for scope in every if scope.key not in local_keys)
            ledger_scopes.append(ledger_scopes[0] if ledger_scopes and shared == ledger_scopes[0] else shared)
        # every scope, every scope of a final call, the ledger's, the ledger's of a final call
        self._scopes: tuple[tuple[Scope, ...], ...] = (scopes[0], scopes[1], ledger_scopes[0], ledger_scopes[1])
        self._shared_dims: frozenset[str] = (
            frozenset(dim for scope in ledger_scopes[1] for dim in scope.limits) or _NO_DIMENSIONS
        )
        all_limits = [dim for scope in scopes[1] for dim in scope.limits]
        self._cost_limited = COST_DIMENSION in all_limits
        self.needs_prompt_estimate = self._cost_limited or any(dim in _TOKEN_DIMENSIONS for dim in all_limits)
        # The express path (the default case): only this meter's run scope, counted in process, enforced.
        self._express = (
            self._local is not None
            and len(owners) == 1
            and not (ledger_scopes[0] or ledger_scopes[1])
            and not self._remote
            and budget.mode == "enforce"
        )
        self._run_checks = (
            budget.seconds is not None
            or budget.max_depth is not None
            or budget.max_fanout is not None
            or budget.max_consecutive_failures is not None
        )

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
        """The scopes a reservation is held in: the run's, its ceilings, then its parents'."""
        return list(self._scopes[1 if final else 0])

    def check(self, request: Request) -> None:
        """Check without holding anything; raise :class:`BudgetExceeded` if refused.

        Runs the run-local checks (time, depth, fan-out, failures) and asks the run
        scopes enforced in process whether ``request`` would fit; shared scopes are
        not asked (their answer comes with the reservation). Used where nothing is
        held, e.g. entering a nested chain, or before a call that reserves later.

        Example:
            >>> m = Meter(Budget(max_model_calls=1), hooks=[])
            >>> m.check(Request.model_call())
            >>> _ = m.after_model_call(m.before_model_call(), None)
            >>> try:
            ...     m.check(Request.model_call())
            ... except BudgetExceeded as exc:
            ...     print(exc.dimension, exc.used)
            model_calls 1
        """
        with self._lock:
            now = self._clock()
            if self._started_at is None:
                self._started_at = now
            started, failures = self._started_at, self._failures
        local = check_run_local(self.budget, request, started_at=started, now=now, consecutive_failures=failures)
        if local is not None:
            self._refuse(Decision.deny(local), request)
        for owner in self._owners if request.amounts else ():
            assert owner._local is not None
            scope = owner._final_scope if request.final else owner._run_scope
            with owner._lock:
                found = find_denial(scope.limits, owner._local.used, owner._local.held, request.amounts)
            if found is not None:
                self._refuse(Decision.deny(Denial(*found, scope.kind, scope.id)), request)

    @property
    def ledger(self) -> Ledger:
        """Where the shared scopes (and a non-exclusive run scope) are kept."""
        if self._ledger is None:
            self._ledger = InMemoryLedger()
        return self._ledger

    @property
    def aledger(self) -> AsyncLedger:
        """The async twin of the ledger (created on first use)."""
        if self._aledger is None:
            self._aledger = self.ledger.as_async()
        return self._aledger

    def usage(self) -> ScopeUsage:
        """The run scope's used/held counters (in process for an exclusive run scope)."""
        self.flush()
        if self._local is not None:
            return self._local.view(self._final_scope)
        return self.ledger.snapshot(self._final_scope)

    def _local_views(self, final: bool = False) -> dict[ScopeKey, ScopeUsage]:
        """Views of the run scopes enforced in process, by scope key."""
        views = {}
        for owner in self._owners:
            assert owner._local is not None
            scope = owner._final_scope if final else owner._run_scope
            views[scope.key] = owner._local.view(scope)
        return views

    @property
    def elapsed(self) -> float:
        """Seconds since the run's first guarded event."""
        return 0.0 if self._started_at is None else self._clock() - self._started_at

    @property
    def consecutive_failures(self) -> int:
        """Failed calls in a row so far."""
        return self._failures

    # -- the shared preparation and interpretation ------------------------------

    def _ledger_scopes(self, *, final: bool = False) -> tuple[Scope, ...]:
        """The scopes a shared-ledger request is held in.

        The run scopes enforced in process are not among them: their usage is
        written to the ledger in one entry when the run is flushed.
        """
        return self._scopes[3 if final else 2]

    def _is_local(self, request: Request) -> bool:
        if self._local is None:
            return False  # the run scope itself is in the ledger
        shared = self._shared_dims
        if not shared:
            return True  # no shared scope limits anything
        return not any(amount and dim in shared for dim, amount in request.amounts.items())

    def _take_pending(self) -> list[tuple[str, dict[str, int]]]:
        """Deferred settlements for the shared scopes, in-process usage as one entry (lock held)."""
        pending, self._pending = self._pending or [], None
        if self._unsynced:
            if self._scopes[2]:
                pending.append((_new_id(), self._unsynced))
            self._unsynced = None
        return pending

    def _for_run_scope(self, amounts: Mapping[str, int]) -> None:
        """Usage the ledger's copy of an exclusive run scope still has to record (lock held).

        Only a remote ledger keeps a copy, for other processes (``budget_plugins
        status``); in this process the meter's counters are the run scope
        (:meth:`usage`, :meth:`report`), and an in-process ledger keeps none.
        """
        if not self._remote:
            return
        self._run_unsynced = self._run_unsynced or {}
        add_amounts(self._run_unsynced, amounts)

    def _take_run_entry(self, force: bool) -> tuple[str, list[Scope], dict[str, int]] | None:
        with self._lock:
            now = self._clock()
            wait = RUN_WRITE_INTERVAL - (now - self._run_written)
            if not self._run_unsynced or (not force and wait > 0):
                if self._run_unsynced:
                    _unwritten.add(self)  # written at the latest when the interpreter exits
                    settler.schedule(self, wait)
                return None
            amounts, self._run_unsynced, self._run_written = self._run_unsynced, None, now
        _unwritten.discard(self)
        return _new_id(), [self._final_scope], amounts

    def _hold_locally(
        self, request: Request, enforce: bool, *, charge: bool = False
    ) -> tuple[Denial | None, bool, list[ScopeUsage]]:
        """Hold in every run scope enforced in process: the first denial, granted, the views."""
        denial: Denial | None = None
        views: list[ScopeUsage] = []
        for index, owner in enumerate(self._owners):
            assert owner._local is not None
            found, view = owner._local.hold(
                owner._final_scope if request.final else owner._run_scope, request.amounts, enforce, charge=charge
            )
            views.append(view)
            if found is not None and denial is None:
                denial = found
                if enforce:
                    for held in self._owners[:index]:
                        assert held._local is not None
                        if charge:
                            held._local.uncharge(request.amounts)
                        else:
                            held._local.release(request.amounts)
                    return denial, False, views
        return denial, True, views

    def _begin(self, request: Request, *, observed: bool = False) -> _Step:
        """Everything a reservation does before the shared ledger is asked (both doors)."""
        local = self._is_local(request)
        enforce = not observed and self.budget.mode == "enforce"
        prefetch = self._prefetch and not local and enforce and not request.final
        credit = self._draw(request) if prefetch and self._credits else None
        try:
            settle = self._prepare(request, take_pending=not local and credit is None, observed=observed)
        except BaseException:
            if credit is not None:
                self._spend(credit, request.amounts, None)
            raise
        denial, granted, views = self._hold_locally(request, enforce) if self._owners else (None, True, [])
        if not granted:
            self._requeue(settle)
            if credit is not None:
                self._spend(credit, request.amounts, None)
                credit = None
        in_ledger = not local and credit is None
        rid = _new_id() if in_ledger else ""  # an id only for what the ledger sees (idempotency)
        ask = in_ledger and granted
        asked = prefetch_amounts(request.amounts, self._room, self._prefetch) if prefetch and ask else request.amounts
        return _Step(rid, settle, denial, views, local, ask, enforce, asked, credit)

    def _ask(self, step: _Step, request: Request) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The shared ledger's reserve arguments (a prefetched hold lasts two leases: see Credit)."""
        prefetching = step.asked is not request.amounts
        if prefetching:
            step.sent_at = time.monotonic()
        return (step.rid, self._ledger_scopes(final=request.final), step.asked), {
            "lease_seconds": self.lease_seconds * 2 if prefetching else self.lease_seconds,
            "enforce": step.enforce,
            "settle": step.settle,
        }

    def _ask_exactly(self, step: _Step, request: Request, shared: Grant) -> bool:
        """A refused prefetch: True when the request alone is to be asked for (settled already)."""
        if shared.granted or step.asked is request.amounts:
            return False
        step.rid, step.settle, step.asked, self._room = _new_id(), [], request.amounts, None
        return True

    # -- prefetched holds (a remote ledger's `prefetch`) -------------------------

    def _draw(self, request: Request) -> Credit | None:
        """Serve ``request`` from a prefetched hold of its kind, if it fits (else retire that hold)."""
        key = (request.kind, request.name)
        with self._lock:
            credit = self._credits.get(key) if self._credits else None
            if credit is None:
                return None
            if credit.draw(request.amounts, time.monotonic()):
                return credit
            self._retire(key)
        return None

    def _retire(self, key: tuple[str, str | None]) -> None:
        """No more draws from a hold; once its calls are settled its usage is committed to it (lock held)."""
        assert self._credits is not None
        credit = self._credits.pop(key)
        credit.retired = True
        self._commit_when_settled(credit)

    def _commit_when_settled(self, credit: Credit) -> bool:
        """Queue a retired hold's commit once no call drawn from it is in flight (lock held)."""
        if not (credit.retired and credit.inflight == 0):
            return False
        self._pending = [*(self._pending or []), (credit.rid, credit.used)]
        return True

    def _spend(self, credit: Credit, held: Mapping[str, int], actual: Mapping[str, int] | None) -> None:
        """Settle (or, with ``actual=None``, release) one call drawn from ``credit``."""
        with self._lock:
            credit.spend(held, actual, time.monotonic())
            due = self._commit_when_settled(credit)
        if due:
            settler.schedule(self, SETTLE_DELAY, debounce=True)

    def _opened(self, step: _Step, request: Request, shared: Grant, ticket: Ticket) -> None:
        """After a granted shared reservation: note the room left; keep a prefetched hold."""
        room = self._room = headroom(self._ledger_scopes(final=request.final), shared.usage)
        if step.asked is request.amounts:
            return
        amounts = request.amounts
        credit = ticket.credit = Credit(
            step.rid,
            {dim: step.asked.get(dim, 0) - amounts.get(dim, 0) for dim in room},
            until=step.sent_at + self.lease_seconds,
            active_at=time.monotonic(),
        )
        key = (request.kind, request.name)
        with self._lock:
            if self._credits and key in self._credits:
                self._retire(key)  # another thread's, opened meanwhile
            self._credits = {**(self._credits or {}), key: credit}
        settler.schedule(self, SETTLE_DELAY, debounce=True)  # its unused part comes back when idle

    def _undo(self, step: _Step, request: Request) -> None:
        """The shared ledger failed: keep the settlements for later, give the local hold back."""
        self._requeue(step.settle)
        self._release_locally(request)

    def _end(
        self, step: _Step, request: Request, shared: Grant | None, meta: dict[str, Any], *, observed: bool = False
    ) -> Ticket:
        granted, denial = step.denial is None or not step.enforce, step.denial
        usage: Sequence[ScopeUsage] = step.views
        if shared is not None:
            if not shared.granted:
                self._release_locally(request)
            granted, denial = granted and shared.granted, denial or shared.denial
            usage = self._align(step.views, shared.usage, request.final)
        if denial is not None and not observed:
            # Raises when enforcing; in shadow mode the hold was made and this only records.
            self._refuse(Decision.deny(denial), request, usage)
        ticket = self._interpret(usage, request, **meta)
        ticket.reservation_id = step.rid
        ticket.local = step.local
        ticket.credit = step.credit
        if self._prefetch and shared is not None and shared.granted:
            self._opened(step, request, shared, ticket)
        return ticket

    def _align(self, local: Sequence[ScopeUsage], shared: Sequence[ScopeUsage], final: bool) -> Sequence[ScopeUsage]:
        """Views in the order of :meth:`scopes`, from the in-process and the ledger's parts."""
        if not local:
            return shared
        every, in_ledger = self._scopes[1 if final else 0], self._scopes[3 if final else 2]
        by_key = {scope.key: view for scope, view in zip(in_ledger, shared, strict=False)}
        views = iter(local)
        return [by_key[scope.key] if scope.key in by_key else next(views) for scope in every]

    def _prepare(
        self, request: Request, *, take_pending: bool = True, observed: bool = False
    ) -> list[tuple[str, dict[str, int]]]:
        with self._lock:
            now = self._clock()
            if self._started_at is None:
                self._started_at = now
            started, failures = self._started_at, self._failures
            settle = self._take_pending() if take_pending else []
        if observed:
            return settle
        local = check_run_local(self.budget, request, started_at=started, now=now, consecutive_failures=failures)
        if local is not None:
            if settle:
                self._requeue(settle)
            self._refuse(Decision.deny(local), request)
        return settle

    def _requeue(self, settle: list[tuple[str, dict[str, int]]]) -> None:
        with self._lock:
            self._pending = [*settle, *(self._pending or [])]

    def _interpret(self, usage: Sequence[ScopeUsage], request: Request, **meta: Any) -> Ticket:
        """Warn/degrade from the views after a granted reservation; the ticket."""
        action: Action = "allow"
        fraction, dimension, limit, in_use, scope_kind, scope_id = 0.0, None, None, None, "run", None
        for scope, view in zip(self._scopes[1 if request.final else 0], usage, strict=False):
            # Only what this request adds can cross a threshold now (settlements are seen by the next one).
            share, dim = pressure(scope.limits, view.used, view.held, request.amounts)
            if dim is not None and share > fraction:
                fraction, dimension = share, dim
                limit, in_use = scope.limits[dim], view.in_use(dim)
                scope_kind, scope_id = scope.kind, scope.id
        if dimension is not None:
            action = classify(self.budget, fraction)
        if action == "allow":
            decision = _ALLOW  # no threshold reached: one shared decision, nothing built per call
        else:
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
        return Ticket("", request, decision, **meta)

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
        cost = Decimal(0)
        if ticket.request.kind != "model_call":
            amounts = {k: v for k, v in ticket.request.amounts.items() if v}
        else:  # the held tokens and cost are replaced by the actual ones
            amounts = {k: v for k, v in ticket.request.amounts.items() if v and k not in _SETTLED_BY_USAGE}
            if usage is not None:
                micros = price_micros(
                    self.budget, ticket.model, usage, provider=self.provider, needs_price=self._cost_limited
                )
                # The exact dollars only for settle events (the counters keep micro-dollars).
                cost = (
                    price_tokens(self.budget, ticket.model, usage, provider=self.provider, needs_price=False).cost_usd
                    if micros and self._listening("settle")
                    else micros_to_usd(micros)
                )
                floor = usage.input_tokens
                for key, value in (
                    ("input_tokens", usage.input_tokens),
                    ("output_tokens", usage.output_tokens),
                    ("total_tokens", usage.total_tokens),
                    (COST_DIMENSION, micros),
                ):
                    if value:
                        amounts[key] = value
        with self._lock:
            if usage is not None and ticket.request.kind == "model_call":
                self._input_floor = _floor_with(self._input_floor, ticket.model or "", floor)
            self._note_outcome(ticket.request, failed)
            self.spent_micros += amounts.get(COST_DIMENSION, 0)
        return amounts, usage, cost

    def _note_outcome(self, request: Request, failed: bool) -> None:
        """A settled request's effect on the consecutive-failure streak (lock held).

        A failure extends it; a model or tool call that succeeded ends it. Steps and
        retries (counted, not called) leave it as it is, on every path.
        """
        if failed:
            self._failures += 1
        elif request.kind in _CALL_KINDS:
            self._failures = 0

    def _after_settle(
        self, ticket: Ticket, settlement: Settlement | None, usage: TokenUsage | None, cost: Decimal
    ) -> None:
        overage = settlement is not None and bool(settlement.overage) and settlement.status != "duplicate"
        if not self._listening("settle") and not (overage and self._listening("overage")):
            return  # nobody listens: build no events on the hot path
        views = settlement.usage if settlement is not None else ()
        costs: dict[str, Decimal] = {}
        for scope, view in zip(self._ledger_scopes(final=ticket.request.final), views, strict=False):
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
        return self._reserve(request, meta)

    def _reserve(self, request: Request, meta: dict[str, Any], *, observed: bool = False) -> Ticket:
        if self._express and not observed:
            return self._express_hold(request, meta)
        step = self._begin(request, observed=observed)
        shared = None
        if step.ask_ledger:
            args, kwargs = self._ask(step, request)
            try:
                shared = self.ledger.reserve(*args, **kwargs)
                if self._ask_exactly(step, request, shared):
                    args, kwargs = self._ask(step, request)
                    shared = self.ledger.reserve(*args, **kwargs)
            except BaseException:
                self._undo(step, request)
                raise
        return self._end(step, request, shared, meta, observed=observed)

    def _release_locally(self, request: Request) -> None:
        for owner in self._owners:
            assert owner._local is not None
            owner._local.release(request.amounts)

    def _route_settlement(
        self, ticket: Ticket, usage: TokenUsage | None, failed: bool
    ) -> tuple[dict[str, int], TokenUsage | None, Decimal, bool]:
        """Price and place a settlement (both doors); the flag says: commit to the ledger now."""
        amounts, usage, cost = self._settle_amounts(ticket, usage, failed)
        if self._settle_locally(ticket, amounts):
            return amounts, usage, cost, False  # recorded with the next shared reservation or flush
        if ticket.credit is not None:
            self._spend(ticket.credit, ticket.request.amounts, amounts)  # committed with its hold later
            return amounts, usage, cost, False
        if self.defer_commits:
            with self._lock:
                self._pending = self._pending or []
                self._pending.append((ticket.reservation_id, amounts))
            return amounts, usage, cost, False
        return amounts, usage, cost, True

    def _settle_locally(self, ticket: Ticket, amounts: dict[str, int]) -> bool:
        """Settle the in-process holds; True when the ledger must still learn of it later."""
        held = ticket.request.amounts
        for owner in self._owners:
            assert owner._local is not None
            owner._local.settle(held, amounts)
        return self._settled_locally(amounts, ticket.local)

    def _settled_locally(self, amounts: dict[str, int], local: bool) -> bool:
        """Note usage settled in process for the ledger's copies; True when the ledger learns of it later."""
        for owner in self._owners[1:] if self._local is not None else self._owners:
            with owner._lock:
                owner._for_run_scope(amounts)
        if not self._owners:
            return False
        with self._lock:
            if self._local is not None:
                self._for_run_scope(amounts)
            if not local:
                return False  # the shared ledger records it in the other scopes
            if not self._scopes[2]:
                return True  # no shared scope: only the run scope's copy records it
            self._unsynced = self._unsynced or {}
            add_amounts(self._unsynced, amounts)
        return True

    def commit(self, ticket: Ticket, usage: TokenUsage | None = None, *, failed: bool = False) -> Settlement | None:
        """Settle a ticket with its actual usage (tokens for model calls).

        Returns ``None`` when the commit is deferred to the next reservation.
        """
        if ticket.settled:
            return None
        ticket.settled = True
        if self._express and ticket.local:
            self._express_settle(ticket, usage, failed)
            return None
        amounts, usage, cost, now = self._route_settlement(ticket, usage, failed)
        settlement = (
            self.ledger.commit(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final), amounts)
            if now
            else None
        )
        self._after_settle(ticket, settlement, usage, cost)
        return settlement

    def _express_settle(self, ticket: Ticket, usage: TokenUsage | None, failed: bool) -> None:
        """Settle a ticket of the express path: the run scope's counters only."""
        amounts, usage, cost = self._settle_amounts(ticket, usage, failed)
        assert self._local is not None
        self._local.settle(ticket.request.amounts, amounts)
        self._after_settle(ticket, None, usage, cost)

    def _release_ticket(self, ticket: Ticket, failed: bool) -> bool:
        """Give the in-process holds back (both doors); True when the ledger holds it too."""
        if ticket.settled:
            return False
        ticket.settled = True
        with self._lock:
            self._failures = self._failures + 1 if failed else self._failures
        self._release_locally(ticket.request)
        if ticket.credit is not None:
            self._spend(ticket.credit, ticket.request.amounts, None)
            return False
        return not ticket.local

    def release(self, ticket: Ticket, *, failed: bool = True) -> None:
        """Give a ticket's hold back (the call did not happen or failed before using anything)."""
        if self._release_ticket(ticket, failed):
            self.ledger.release(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final))

    def flush(self, *, force: bool = True) -> None:
        """Commit every deferred settlement now.

        Args:
            force: When False (what adapters do when a run ends), a remote
                ledger's pending settlement is left for the next reservation to
                carry, or sent by a background thread after ``SETTLE_DELAY``
                seconds, and the run scope's copy is written at most once every
                ``RUN_WRITE_INTERVAL`` seconds (and at interpreter exit).
        """
        self._send(self._flush_plan(force))

    def _flush_due(self) -> None:
        """The settler's flush: send what is pending now."""
        self._send(self._flush_plan(False, deferrable=False))

    def _send(self, plan: list[tuple[str, Sequence[Scope], dict[str, int]]]) -> None:
        for index, (rid, scopes, amounts) in enumerate(plan):
            try:
                self.ledger.commit(rid, scopes, amounts)
            except BaseException:
                self._put_back(plan[index:])
                raise

    def _flush_plan(self, force: bool, *, deferrable: bool = True) -> list[tuple[str, Sequence[Scope], dict[str, int]]]:
        """The commits a flush sends now (both doors)."""
        if not (self._pending or self._unsynced or self._run_unsynced or self._credits):
            return []  # nothing deferred: no lock to take
        if deferrable and not force and self._remote and (self._pending or self._unsynced or self._credits):
            settler.schedule(self, SETTLE_DELAY, debounce=True)  # a next reservation may carry it
            return []
        busy = False
        with self._lock:
            now = time.monotonic()
            for key, credit in list((self._credits or {}).items()):
                # Prefetched holds, once idle: their usage committed, their unused part given back.
                if force or credit.idle(now, SETTLE_DELAY):
                    self._retire(key)
                else:
                    busy = True
            pending = self._take_pending()
        if busy:
            settler.schedule(self, SETTLE_DELAY, debounce=True)
        shared = self._ledger_scopes()
        plan: list[tuple[str, Sequence[Scope], dict[str, int]]] = (
            [(rid, shared, amounts) for rid, amounts in pending] if shared else []
        )
        entry = self._take_run_entry(force)
        if entry is not None:
            plan.append(entry)
        return plan

    def _put_back(self, unsent: list[tuple[str, Sequence[Scope], dict[str, int]]]) -> None:
        """The ledger failed mid-flush: what was not sent is pending again (same ids: no double count)."""
        with self._lock:
            for rid, scopes, amounts in unsent:
                if scopes and scopes[0] is self._final_scope and self._local is not None:
                    self._for_run_scope(amounts)  # the run scope's copy (a new id next time)
                else:
                    self._pending = [*(self._pending or []), (rid, amounts)]

    # -- observation door: what already happened, and what is used up ---------------

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
        if usage is None and self._is_local(request):
            return self._charge_locally(request, meta, observed=True, failed=failed)
        ticket = self._reserve(request, meta, observed=True)
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
        local = self._local_views()
        views = [local.get(scope.key) or self.ledger.snapshot(scope) for scope in self._scopes[0]]
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
        return await self._areserve(request, meta)

    async def _areserve(self, request: Request, meta: dict[str, Any], *, observed: bool = False) -> Ticket:
        if self._express and not observed:
            return self._express_hold(request, meta)  # in process: nothing to await
        step = self._begin(request, observed=observed)
        shared = None
        if step.ask_ledger:
            args, kwargs = self._ask(step, request)
            try:
                shared = await self.aledger.reserve(*args, **kwargs)
                if self._ask_exactly(step, request, shared):
                    args, kwargs = self._ask(step, request)
                    shared = await self.aledger.reserve(*args, **kwargs)
            except BaseException:
                self._undo(step, request)
                raise
        return self._end(step, request, shared, meta, observed=observed)

    async def arecord(
        self, request: Request, usage: TokenUsage | None = None, *, failed: bool = False, **meta: Any
    ) -> Ticket:
        """Async twin of :meth:`record`."""
        if usage is None and self._is_local(request):
            return self._charge_locally(request, meta, observed=True, failed=failed)  # in process: nothing to await
        ticket = await self._areserve(request, meta, observed=True)
        await self.acommit(ticket, usage, failed=failed)
        return ticket

    async def areached(self, dimensions: Iterable[str] | None = None) -> BudgetExceeded | None:
        """Async twin of :meth:`reached`."""
        await self.aflush()
        local = self._local_views()
        views = [local.get(scope.key) or await self.aledger.snapshot(scope) for scope in self._scopes[0]]
        return self._reached(views, dimensions)

    async def aflush(self, *, force: bool = True) -> None:
        """Async twin of :meth:`flush`."""
        plan = self._flush_plan(force)
        for index, (rid, scopes, amounts) in enumerate(plan):
            try:
                await self.aledger.commit(rid, scopes, amounts)
            except BaseException:
                self._put_back(plan[index:])
                raise

    async def acommit(
        self, ticket: Ticket, usage: TokenUsage | None = None, *, failed: bool = False
    ) -> Settlement | None:
        """Async twin of :meth:`commit`."""
        if ticket.settled:
            return None
        ticket.settled = True
        if self._express and ticket.local:
            self._express_settle(ticket, usage, failed)
            return None
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
        if self._release_ticket(ticket, failed):
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
        floor = self._input_floor  # replaced, or a dict updated in place, under the lock: one atomic read
        if floor is not None:
            key = model or ""
            if isinstance(floor, tuple):
                input_tokens = max(input_tokens, floor[1]) if floor[0] == key else input_tokens
            else:
                input_tokens = max(input_tokens, floor.get(key, 0))
        output = max_output_tokens or self.budget.default_max_output_tokens
        # Nothing caps cost: no need to price the worst case (the actual cost is still priced at settle).
        cost_micros = (
            price_micros(self.budget, model, TokenUsage(input_tokens, output), provider=self.provider)
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
        """Count one step (steps are counted when they start)."""
        return self.count(Request.step(node, depth=depth, fanout=fanout, retry=retry, extra=extra), node=node)

    async def acount(self, request: Request, **meta: Any) -> Ticket:
        """Async twin of :meth:`count`."""
        if self._is_local(request):
            return self.count(request, **meta)  # in process: nothing to await
        ticket = await self.areserve(request, **meta)
        await self.acommit(ticket)
        return ticket

    def count(self, request: Request, **meta: Any) -> Ticket:
        """Reserve and settle at once a request whose amounts are final when it starts (a step, a retry).

        A request that no shared scope limits is checked and counted in process in
        one step; others are reserved and committed.

        Example:
            >>> m = Meter(Budget(max_steps=1), hooks=[])
            >>> _ = m.count(Request.step("agent"))
            >>> m.count(Request.step("agent"))
            Traceback (most recent call last):
            ...
            budget_plugins._errors.BudgetExceeded: Exceeded the steps limit of 1 (used=1, requested=1) in run scope
        """
        if self._express:
            return self._express_hold(request, meta, charge=True)
        if not self._is_local(request):
            ticket = self.reserve(request, **meta)
            self.commit(ticket)
            return ticket
        return self._charge_locally(request, meta)

    def _express_hold(self, request: Request, meta: dict[str, Any], *, charge: bool = False) -> Ticket:
        """A reservation (``charge``: a count) on the express path: one lock, no ledger, no step object.

        Only for a meter whose one scope is its own run scope, counted in process and
        enforced (``_express``): the same checks (:func:`check_run_local`,
        :func:`find_denial`, :func:`pressure`) as the general path, in one step.
        """
        scope = self._final_scope if request.final else self._run_scope
        counters = self._local
        assert counters is not None
        amounts = request.amounts
        local: Denial | None = None
        found = None
        share, dim = 0.0, None
        with self._lock:
            now = self._clock()
            if self._started_at is None:
                self._started_at = now
            if self._run_checks:
                local = check_run_local(
                    self.budget, request, started_at=self._started_at, now=now, consecutive_failures=self._failures
                )
            if local is None:
                found = find_denial(scope.limits, counters.used, counters.held, amounts)
                if found is None:
                    add_amounts(counters.used if charge else counters.held, amounts)
                    share, dim = pressure(scope.limits, counters.used, counters.held, amounts)
        if local is not None:
            self._refuse(Decision.deny(local), request)
        if found is not None:
            self._refuse(Decision.deny(Denial(*found, scope.kind, scope.id)), request, [counters.view(scope)])
        if dim is not None and classify(self.budget, share) != "allow":
            ticket = self._interpret(
                [ScopeUsage(scope.label, counters.used, counters.held, scope.limits)], request, **meta
            )
        else:
            if request.kind == "model_call":
                meta.setdefault("model", request.name)
            ticket = Ticket("", request, _ALLOW, **meta)
        ticket.local = True
        if charge:
            ticket.settled = True
            if request.kind == "tool_call":
                self._after_settle(ticket, None, None, Decimal(0))
        return ticket

    def _charge_locally(
        self, request: Request, meta: dict[str, Any], *, observed: bool = False, failed: bool | None = None
    ) -> Ticket:
        """Check (unless ``observed``) and count in process at once a request no shared scope limits.

        ``failed`` updates the consecutive-failure count as a settlement does (None: leave it).
        """
        self._prepare(request, take_pending=False, observed=observed)
        denial, _, views = self._hold_locally(request, not observed and self.budget.mode == "enforce", charge=True)
        if denial is not None and not observed:
            self._refuse(Decision.deny(denial), request, views)  # raises unless in shadow mode
        ticket = self._interpret(views, request, **meta)
        ticket.local = ticket.settled = True
        amounts = {k: v for k, v in request.amounts.items() if v}
        if failed is not None:
            with self._lock:
                self._note_outcome(request, failed)
        self._settled_locally(amounts, True)
        self._after_settle(ticket, None, None, Decimal(0))
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
            "limits": dict(self.run_limits),
            "cost_usd": str(micros_to_usd(view.used.get(COST_DIMENSION, 0))),
            "elapsed_seconds": round(self.elapsed, 3),
            "exhausted": self.exhausted.as_dict() if self.exhausted else None,
            "shadow_denials": dict(self.shadow_denials),
        }


_ALLOW = Decision("allow")


def _floor_with(
    floor: tuple[str, int] | dict[str, int] | None, model: str, tokens: int
) -> tuple[str, int] | dict[str, int]:
    """Input floors per model: one pair while a run uses one model (an idle run stays small)."""
    if floor is None or (isinstance(floor, tuple) and floor[0] == model):
        return (model, tokens)
    floors = dict([floor]) if isinstance(floor, tuple) else floor
    floors[model] = tokens
    return floors


def _new_id() -> str:
    """A random reservation id (idempotency key)."""
    return os.urandom(16).hex()


def estimate_tokens(text: str) -> int:
    """A cheap upper-leaning token estimate for a prompt (about 4 characters a token).

    Example:
        >>> estimate_tokens("hello world!")
        3
    """
    return math.ceil(len(text) / 4)


__all__ = ["REACHED_DIMENSIONS", "Denial", "Meter", "Ticket", "current_meter", "default_ledger", "estimate_tokens"]
