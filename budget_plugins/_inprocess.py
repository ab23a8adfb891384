"""What the meter keeps in this process: run-scope counters, shared limits, the settler thread.

An exclusive run scope (only its meter writes it) needs none of a ledger's
machinery: :class:`RunCounters` are its used and held amounts under the
meter's lock. :func:`budget_limits` computes a frozen budget's limits once.
:class:`Settler` sends, off the caller's path, what finished runs still owe a
remote ledger.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from budget_plugins._decide import Denial, effective_limits, find_denial
from budget_plugins._ledger import Scope, add_amounts, released
from budget_plugins._policy import Budget
from budget_plugins._usage import ScopeUsage

RUN_WRITE_INTERVAL = 1.0
"""Seconds between writes of an exclusive run scope's copy to a remote ledger when runs end."""

SETTLE_DELAY = 0.2
"""Seconds a finished run's last settlement on a remote ledger waits for a next reservation
of the same meter to carry it (no round trip of its own) before it is sent by itself."""

_log = logging.getLogger("budget_plugins")


class RunCounters:
    """An exclusive run scope's counters, kept in this process.

    Only this process writes the scope, so a hold needs no reservation id, lease
    or tombstone: it is the request's amounts, and the ticket settles it once.
    """

    __slots__ = ("held", "lock", "used")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock  # the owning meter's
        self.used: dict[str, int] = {}
        self.held: dict[str, int] = {}

    def hold(
        self, scope: Scope, amounts: Mapping[str, int], enforce: bool, *, charge: bool = False
    ) -> tuple[Denial | None, ScopeUsage]:
        """Hold ``amounts`` unless a limit refuses (and ``enforce``); the denial and the view after.

        With ``charge``, the amounts are counted as used at once (nothing to settle).
        """
        with self.lock:
            found = find_denial(scope.limits, self.used, self.held, amounts)
            denial = None if found is None else Denial(*found, scope.kind, scope.id)
            if denial is None or not enforce:
                add_amounts(self.used if charge else self.held, amounts)
            # The live counters, read at once by the meter (a refusal copies them): no copies per call.
            return denial, ScopeUsage(scope.label, self.used, self.held, scope.limits)

    def uncharge(self, amounts: Mapping[str, int]) -> None:
        with self.lock:
            add_amounts(self.used, amounts, -1)

    def settle(self, held: Mapping[str, int], actual: Mapping[str, int]) -> None:
        with self.lock:
            self.held = released(self.held, held)
            add_amounts(self.used, actual)

    def release(self, held: Mapping[str, int]) -> None:
        with self.lock:
            self.held = released(self.held, held)

    def add(self, actual: Mapping[str, int]) -> None:
        with self.lock:
            add_amounts(self.used, actual)

    def view(self, scope: Scope) -> ScopeUsage:
        with self.lock:
            return ScopeUsage(scope.label, dict(self.used), dict(self.held), scope.limits)


_LIMITS: dict[int, tuple[Budget, Mapping[str, int], Mapping[str, int]]] = {}


def budget_limits(budget: Budget) -> tuple[Mapping[str, int], Mapping[str, int]]:
    """A budget's run-scope limits (final, ordinary), computed once per frozen budget and shared."""
    hit = _LIMITS.get(id(budget))
    if hit is not None and hit[0] is budget:
        return hit[1], hit[2]
    final = MappingProxyType(budget.counter_limits())
    ordinary = (
        final
        if budget.finalization_reserve == 0
        else MappingProxyType(effective_limits(final, budget.finalization_reserve, final=False))
    )
    if len(_LIMITS) >= 512:
        _LIMITS.clear()
    _LIMITS[id(budget)] = (budget, final, ordinary)  # the reference keeps the id from being reused
    return final, ordinary


class Flushable(Protocol):
    """What the settler needs of a meter."""

    run_id: str

    def flush(self, *, force: bool = True) -> None: ...

    def _flush_due(self) -> None: ...


class Settler:
    """One daemon thread per process that sends what finished runs left for a remote ledger.

    A run that ends leaves its last settlement (and its run scope's copy) pending:
    if the same meter reserves again soon, the settlement rides along with that
    reservation; otherwise this thread sends it after :data:`SETTLE_DELAY` (the
    copy after :data:`RUN_WRITE_INTERVAL`), off the caller's path. What is still
    pending when the interpreter exits is sent then.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Flushable, tuple[float, float]] = {}  # meter -> (when, at the latest)
        self._thread: threading.Thread | None = None

    def schedule(self, meter: Flushable, delay: float, *, debounce: bool = False) -> None:
        """Flush ``meter`` in ``delay`` seconds.

        With ``debounce`` (a finished run's settlement), each call postpones the
        flush, as the meter's next reservation would carry what is pending, but
        never beyond :data:`RUN_WRITE_INTERVAL` after the first call: a busy
        meter's run scope copy still reaches the ledger once a second.
        """
        with self._cond:
            now = time.monotonic()
            when, latest = self._due.get(meter, (math.inf, math.inf))
            if debounce:
                latest = min(latest, now + RUN_WRITE_INTERVAL)
                when = min(now + delay, latest)
            else:
                when = latest = min(when, now + delay)
            self._due[meter] = (when, latest)
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="budget_plugins-settler", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [meter for meter, (when, _) in self._due.items() if when <= now]
                if not due:
                    self._cond.wait(min((when for when, _ in self._due.values()), default=now + 60.0) - now)
                    continue
                for meter in due:
                    del self._due[meter]
            for meter in due:
                try:
                    meter._flush_due()
                except Exception:  # the ledger is down: what was not sent is pending again
                    _log.warning("could not settle run %s; retrying", meter.run_id, exc_info=True)
                    self.schedule(meter, RUN_WRITE_INTERVAL)

    def drain(self) -> list[Flushable]:
        with self._cond:
            meters, self._due = list(self._due), {}
        return meters


settler = Settler()

__all__ = ["RUN_WRITE_INTERVAL", "SETTLE_DELAY", "RunCounters", "Settler", "budget_limits", "settler"]
