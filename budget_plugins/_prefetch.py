"""Prefetched holds: budget held in the shared scopes ahead of calls, drawn in process.

With ``prefetch=N`` on a remote ledger (``RedisLedger(..., prefetch=16)``), a
meter's reservation in the shared scopes may hold up to ``N`` calls' worth of a
request's limited amounts instead of one. The following calls of the same kind
are then checked against that :class:`Credit` in process, without a round trip;
their actual usage is committed to the credit's hold in one step when the credit
runs out, has been out for a lease (it is held for two), or the meter goes idle
(the hold's unused part comes back then).

Nothing can overspend: every call is covered by a hold in the ledger (its own or
the credit's). A credit only takes a share of what its scopes had left
(:data:`CREDIT_SHARE`), so that near a limit it shrinks to exactly one call and a
shared ceiling is then decided call by call, as without prefetch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from budget_plugins._ledger import Scope, add_amounts
from budget_plugins._usage import ScopeUsage

CREDIT_SHARE = 8
"""A credit takes at most 1/``CREDIT_SHARE`` of what every scope it is held in has left."""


@dataclass(slots=True)
class Credit:
    """One prefetched hold: what is left to draw, and the usage to commit to it.

    Times are ``time.monotonic()`` seconds (leases run on real time, whatever clock
    a meter is given for its wall-clock limit).

    Args:
        rid: The hold's reservation id in the ledger.
        left: Still drawable, per limited shared dimension.
        until: Time from which nothing more is drawn: the hold lasts two leases, so a
            call drawn before ``until`` is covered for at least a whole lease, as a
            call that holds for itself is.
        active_at: Time of the last draw or settlement (an idle credit is given back).

    Example:
        >>> credit = Credit("r1", {"cost_usd": 300}, until=10.0, active_at=0.0)
        >>> credit.draw({"cost_usd": 100, "model_calls": 1}, now=1.0)
        True
        >>> credit.spend({"cost_usd": 100}, {"cost_usd": 40, "model_calls": 1}, now=2.0)
        >>> credit.left, credit.used, credit.inflight, credit.idle(2.1, 0.2), credit.idle(2.2, 0.2)
        ({'cost_usd': 260}, {'cost_usd': 40, 'model_calls': 1}, 1, False, False)
        >>> credit.draw({"cost_usd": 300}, now=3.0), credit.draw({"cost_usd": 1}, now=10.0)
        (False, False)
    """

    rid: str
    left: dict[str, int]
    until: float
    active_at: float
    inflight: int = 1
    """Calls drawn and not yet settled (the first is the call that opened it)."""
    used: dict[str, int] = field(default_factory=dict)
    retired: bool = False

    def idle(self, now: float, delay: float) -> bool:
        """No call in flight and none drawn or settled for ``delay`` seconds (or no more draws)."""
        return self.inflight == 0 and (now - self.active_at >= delay or now >= self.until)

    def draw(self, amounts: Mapping[str, int], now: float) -> bool:
        """Take ``amounts`` (its limited dimensions) from the credit, if they all fit."""
        if now >= self.until:
            return False
        left = self.left
        for dim, held in left.items():
            if amounts.get(dim, 0) > held:
                return False
        for dim in left:
            left[dim] -= amounts.get(dim, 0)
        self.inflight += 1
        self.active_at = now
        return True

    def spend(self, held: Mapping[str, int], actual: Mapping[str, int] | None, now: float) -> None:
        """Settle one drawn call: its hold comes back, its actual usage (``None``: released) is kept."""
        left = self.left
        for dim in left:
            left[dim] += held.get(dim, 0) - (actual.get(dim, 0) if actual else 0)
        if actual:
            add_amounts(self.used, actual)
        self.inflight -= 1
        self.active_at = now


def headroom(scopes: Sequence[Scope], views: Sequence[ScopeUsage]) -> dict[str, int]:
    """What the scopes have left, per limited dimension (the smallest over the scopes).

    Example:
        >>> scope = Scope("tenant", "acme", limits={"cost_usd": 1000})
        >>> headroom([scope], [ScopeUsage("t", used={"cost_usd": 300}, held={"cost_usd": 100})])
        {'cost_usd': 600}
    """
    left: dict[str, int] = {}
    for scope, view in zip(scopes, views, strict=False):
        for dim, limit in scope.limits.items():
            room = limit - view.used.get(dim, 0) - view.held.get(dim, 0)
            left[dim] = min(room, left.get(dim, room))
    return left


def prefetch_amounts(amounts: Mapping[str, int], room: Mapping[str, int] | None, prefetch: int) -> Mapping[str, int]:
    """What to hold for a request: ``amounts`` times up to ``prefetch`` in the limited dimensions.

    The multiple is the largest that keeps the hold within 1/:data:`CREDIT_SHARE`
    of ``room`` in every limited dimension the request uses; ``amounts`` itself
    (the same object) when that is one, or when nothing is known of the room yet.

    Example:
        >>> prefetch_amounts({"cost_usd": 10, "model_calls": 1}, {"cost_usd": 800}, 16)
        {'cost_usd': 100, 'model_calls': 1}
        >>> prefetch_amounts({"cost_usd": 10}, {"cost_usd": 150}, 16)
        {'cost_usd': 10}
    """
    if room is None or prefetch <= 1:
        return amounts
    times = prefetch
    for dim, amount in amounts.items():
        if amount > 0 and dim in room:
            times = min(times, max(room[dim], 0) // (CREDIT_SHARE * amount))
    if times <= 1:
        return amounts
    return {dim: amount * times if dim in room else amount for dim, amount in amounts.items()}


__all__ = ["CREDIT_SHARE", "Credit", "headroom", "prefetch_amounts"]
