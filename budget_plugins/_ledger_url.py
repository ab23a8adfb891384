"""Choose a ledger from a URL: ``memory://``, ``redis://``, ``rediss://``, ``redis+cluster://``.

Redis is imported only when a Redis URL is used, so ``import budget_plugins``
works without the ``redis`` extra.
"""

from __future__ import annotations

from typing import Any

from budget_plugins._errors import BudgetConfigError
from budget_plugins._ledger import InMemoryLedger, Ledger

_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")


def ledger_from_url(url: str, **options: Any) -> Ledger:
    """A ledger for ``url``.

    Args:
        url: ``memory://`` (an :class:`~budget_plugins.InMemoryLedger` in this
            process), ``redis://host:port/db``, ``rediss://...`` (TLS),
            ``unix:///path/to/socket`` or ``redis+cluster://host:port`` (Redis Cluster).
        **options: Passed to the ledger: for Redis, e.g. ``failure_policy``,
            ``timeout``, ``namespace`` (see :class:`~budget_plugins.RedisLedger`);
            for memory, ``tombstone_seconds``.

    Returns:
        A ledger; call ``as_async()`` on it for the asyncio twin.

    Raises:
        BudgetConfigError: An unknown scheme.
        ImportError: A Redis URL without the ``redis`` package installed (the message
            names ``pip install "budget-plugins[redis]"``).

    Example:
        >>> ledger_from_url("memory://")
        InMemoryLedger(scopes=0, holds=0)
        >>> ledger_from_url("redis://127.0.0.1:6379/0", failure_policy="fail_open")  # doctest: +SKIP
        RedisLedger('redis://127.0.0.1:6379/0', cluster=False, failure_policy='fail_open')
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        return InMemoryLedger(**options)
    if scheme in _REDIS_SCHEMES:
        from budget_plugins._redis import RedisLedger

        return RedisLedger(url, **options)
    raise BudgetConfigError(
        f"unsupported ledger URL {url!r}: use memory://, redis://, rediss://, unix:// or redis+cluster://",
        field="url",
    )
