"""The Redis ledger: atomic run, workflow and tenant ceilings shared across processes and machines.

:class:`RedisLedger` (blocking) and :class:`AsyncRedisLedger` (asyncio) are thin
doors around one :class:`~budget_plugins._redis._core.Core`: they only carry
the Redis steps the core yields to a client and hand the replies back. Key
layout, Lua scripts, decoding, retries, circuit breaker and fail-open policy
live in the core (see ``docs/redis.md``).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from budget_plugins._errors import BudgetConfigError
from budget_plugins._ledger import DEFAULT_LEASE_SECONDS, AsyncLedger, Grant, Ledger, Scope, Settlement
from budget_plugins._redis._core import (
    SCRIPT_NAMES,
    Call,
    Core,
    FailurePolicy,
    RedisOptions,
    ScopeStatus,
    Step,
    node_name,
    parse_url,
    redis,
    script_source,
)
from budget_plugins._usage import ScopeUsage

T = TypeVar("T")

DEFAULT_URL = "redis://localhost:6379/0"

__all__ = ["AsyncRedisLedger", "RedisLedger", "ScopeStatus"]


def _options(
    url: str,
    *,
    cluster: bool | None,
    namespace: str,
    failure_policy: FailurePolicy,
    timeout: float,
    connect_timeout: float,
    retries: int,
    breaker_threshold: int,
    breaker_cooldown: float,
    fail_open_allowance: float | Mapping[str, int],
    tombstone_seconds: float,
    run_ttl_seconds: float,
    sweep_batch: int,
) -> RedisOptions:
    driver_url, is_cluster = parse_url(url)
    return RedisOptions(
        url=driver_url,
        cluster=is_cluster if cluster is None else cluster,
        namespace=namespace,
        failure_policy=failure_policy,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        breaker_threshold=breaker_threshold,
        breaker_cooldown=breaker_cooldown,
        fail_open_allowance=fail_open_allowance,
        tombstone_seconds=tombstone_seconds,
        run_ttl_seconds=run_ttl_seconds,
        sweep_batch=sweep_batch,
    )


async def _close_with_loop(client: Any) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


class _Door:
    """What both doors share: the options, the core, the client they were given."""

    remote = True
    """Tells the :class:`~budget_plugins.Meter` to settle calls inside the next reserve."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        cluster: bool | None = None,
        namespace: str = "bp",
        failure_policy: FailurePolicy = "fail_closed",
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retries: int = 1,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 1.0,
        fail_open_allowance: float | Mapping[str, int] = 0.01,
        tombstone_seconds: float = 3600.0,
        run_ttl_seconds: float = 7 * 86400.0,
        sweep_batch: int = 256,
        prefetch: int = 0,
        _core: Core | None = None,
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise BudgetConfigError(
                f"prefetch must be a whole number of calls >= 0 (0 or 1: none), got {prefetch!r}", field="prefetch"
            )
        self.prefetch = prefetch
        """Calls' worth a meter's shared reservation may hold ahead (0: one call per reservation)."""
        self._core = _core or Core(
            _options(
                url or DEFAULT_URL,
                cluster=cluster,
                namespace=namespace,
                failure_policy=failure_policy,
                timeout=timeout,
                connect_timeout=connect_timeout,
                retries=retries,
                breaker_threshold=breaker_threshold,
                breaker_cooldown=breaker_cooldown,
                fail_open_allowance=fail_open_allowance,
                tombstone_seconds=tombstone_seconds,
                run_ttl_seconds=run_ttl_seconds,
                sweep_batch=sweep_batch,
            )
        )
        self._client: Any = client
        self._own_client = client is None
        self._url_given = client is None or url is not None
        self._scripts: dict[str, Any] = {}
        self._setup()

    def _setup(self) -> None:
        """Door-specific state (a lock, or per-event-loop pools)."""

    @property
    def options(self) -> RedisOptions:
        """The ledger's configuration."""
        return self._core.options


class RedisLedger(_Door):
    """A ledger in Redis (single server or Redis Cluster), shared by every process that uses it.

    Every operation is one Lua script call (one round trip): reserve checks
    every limit of every scope and holds the request in all of them or in none,
    after committing the reservations listed in ``settle``. Reservation ids
    make every operation idempotent, so a call re-sent after a timeout never
    charges twice. Holds carry a lease measured on the server's clock; holds of
    a crashed process come back when it runs out.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://host:port``
            (default ``redis://localhost:6379/0``).
        client: A ready ``redis.Redis``/``redis.cluster.RedisCluster`` to use instead of
            building one from ``url`` (its timeouts and retries are then yours).
        cluster: Force cluster mode on or off (default: from the URL scheme).
        namespace: Prefix inside every hash tag, to share one Redis between apps.
        failure_policy: ``"fail_closed"`` (default): when Redis cannot answer, raise
            :class:`~budget_plugins.LedgerUnavailable` (a ``BudgetExceeded``) within
            the timeout. ``"fail_open"``: answer from a small local allowance, log
            loudly, and replay commits to Redis once it answers again.
        timeout: Socket timeout of one attempt, in seconds.
        connect_timeout: Connect timeout of one attempt, in seconds.
        retries: Extra attempts after a connection error or timeout (all scripts are
            idempotent by reservation id, so a re-sent call never double-charges).
            The worst case before failing is ``(retries + 1) * (connect_timeout + timeout)``.
        breaker_threshold: Consecutive failed calls after which calls fail fast.
        breaker_cooldown: Seconds of failing fast before one call probes again.
        fail_open_allowance: Under ``fail_open``, what this process may use of each
            limit while Redis is unreachable: a fraction of each limit (default 1 %)
            or absolute amounts per dimension (dimensions not listed get nothing).
        tombstone_seconds: How long settled reservation ids are remembered (so a late
            duplicate commit is recognised), and how long after its lease a hold's
            late commit is still reported as ``expired`` rather than ``unknown``.
        run_ttl_seconds: Run scopes idle this long are deleted (0: never). Workflow
            and tenant scopes are kept.
        sweep_batch: Expired holds returned per scope and script call.
        prefetch: Let a meter's reservation in the shared scopes hold up to this
            many calls' worth of budget, and serve its next calls of the same kind
            from that hold in process: about ``1/prefetch`` round trips per call
            instead of one. A prefetched hold takes at most 1/8 of what its scopes
            have left, so near a limit it shrinks to one call and the ceiling is
            decided call by call again; nothing can overspend, but other processes
            see the prefetched part as held (not used) until the meter settles it:
            when the hold is used up, a lease after it was taken (it is held for
            two, so every call drawn from it is covered for a whole lease), or
            once the meter is idle for ``SETTLE_DELAY``. Default 0 (off).

    Example:
        >>> ledger = RedisLedger("redis://localhost:6379/0")  # doctest: +SKIP
        >>> run = Scope("run", "r1", tenant="acme", limits={"cost_usd": 4_000_000})
        >>> ledger.reserve("rid-1", [run], {"cost_usd": 3_000_000}).granted  # doctest: +SKIP
        True
        >>> ledger.reserve("rid-2", [run], {"cost_usd": 3_000_000}).denial.dimension  # doctest: +SKIP
        'cost_usd'
        >>> ledger.commit("rid-1", [run], {"cost_usd": 2_500_000}).status  # doctest: +SKIP
        'committed'
    """

    def _setup(self) -> None:
        self._lock = threading.Lock()

    # -- the door: run the core's steps with a blocking client ------------------------

    def _connected(self) -> tuple[Any, dict[str, Any]]:
        with self._lock:
            if self._client is None:
                opts = self._core.options
                kwargs = opts.client_kwargs()
                from redis.backoff import NoBackoff
                from redis.cluster import RedisCluster
                from redis.retry import Retry

                # No driver-level retries: the core retries, bounded, and only idempotent scripts.
                factory = RedisCluster if opts.cluster else redis.Redis
                self._client = factory.from_url(opts.url, retry=Retry(NoBackoff(), 0), **kwargs)
            if not self._scripts:
                self._scripts = {name: self._client.register_script(script_source(name)) for name in SCRIPT_NAMES}
            return self._client, self._scripts

    def _execute(self, step: Step) -> Any:
        client, scripts = self._connected()
        if step.kind == "scan":
            return list(client.scan_iter(match=step.name, count=1000))
        # EVALSHA straight through the client (what Script.__call__ does, minus its per-call work).
        script = scripts[step.name]
        try:
            return client.execute_command("EVALSHA", script.sha, len(step.keys), *step.keys, *step.args)
        except redis.exceptions.NoScriptError:  # a restarted or failed-over server: load it and send again
            script.sha = client.script_load(script.script)
            return client.execute_command("EVALSHA", script.sha, len(step.keys), *step.keys, *step.args)

    def _node_of(self, key: bytes) -> str:
        return node_name(self._client, key)

    def _drive(self, steps: Generator[Step, Any, T]) -> T:
        try:
            step = next(steps)
            while True:
                try:
                    reply = self._execute(step)
                except Exception as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)

    def _run(self, call: Call[T]) -> T:
        return self._drive(self._core.execute(call, self._node_of))

    # -- the ledger protocol ----------------------------------------------------------

    def reserve(
        self,
        reservation_id: str,
        scopes: Sequence[Scope],
        amounts: Mapping[str, int],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        enforce: bool = True,
        settle: Sequence[tuple[str, Mapping[str, int]]] = (),
    ) -> Grant:
        """See :meth:`budget_plugins.Ledger.reserve`.

        Raises:
            LedgerUnavailable: Redis could not answer and the policy is ``fail_closed``.
            ReservationError: The id was already used for a live hold of other amounts.
            BudgetConfigError: Negative, fractional or too large amounts; scopes of
                several tenants in one call.
        """
        return self._run(
            self._core.reserve(
                reservation_id, scopes, amounts, lease_seconds=lease_seconds, enforce=enforce, settle=settle
            )
        )

    def commit(self, reservation_id: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Settlement:
        """See :meth:`budget_plugins.Ledger.commit` (pass the scopes the reservation was made in)."""
        return self._run(self._core.commit(reservation_id, scopes, actual))

    def release(self, reservation_id: str, scopes: Sequence[Scope]) -> bool:
        """See :meth:`budget_plugins.Ledger.release`."""
        return self._run(self._core.release(reservation_id, scopes))

    def extend(self, reservation_id: str, scopes: Sequence[Scope], lease_seconds: float) -> bool:
        """See :meth:`budget_plugins.Ledger.extend`."""
        return self._run(self._core.extend(reservation_id, scopes, lease_seconds))

    def snapshot(self, scope: Scope) -> ScopeUsage:
        """See :meth:`budget_plugins.Ledger.snapshot` (limits as last stored when ``scope`` has none)."""
        return self._run(self._core.status(scope)).usage

    def status(self, scope: Scope) -> ScopeStatus:
        """Limits, used, held, remaining, window bucket and live holds of one scope.

        The limits are those stored by the last reservation, unless ``scope``
        carries its own; build the scope without limits to read them.

        Example:
            >>> ledger.status(Scope("tenant", "acme", tenant="acme", window="month")).remaining  # doctest: +SKIP
            {'cost_usd': 497500000}
        """
        return self._run(self._core.status(scope))

    def sweep(self, tenants: Sequence[str] | None = None) -> int:
        """Return every expired hold now (they are also swept lazily); the number swept.

        Args:
            tenants: Only these tenants' holds; all of the namespace (SCAN) by default.
        """
        return self._drive(self._core.sweep(self._node_of, tenants))

    def as_async(self) -> AsyncRedisLedger:
        """An :class:`AsyncRedisLedger` on the same URL and configuration (and circuit breakers)."""
        if not self._url_given:
            raise BudgetConfigError(
                "this RedisLedger was built from a client: build AsyncRedisLedger(client=...) yourself, "
                "or pass url=... as well",
                field="client",
            )
        return AsyncRedisLedger(_core=self._core, prefetch=self.prefetch)

    def close(self) -> None:
        """Close the connections this ledger opened."""
        with self._lock:
            client, self._client = self._client, None
            self._scripts = {}
        if client is not None and self._own_client:
            client.close()

    def __repr__(self) -> str:
        opts = self._core.options
        return f"RedisLedger({opts.url!r}, cluster={opts.cluster}, failure_policy={opts.failure_policy!r})"


class AsyncRedisLedger(_Door):
    """The asyncio twin of :class:`RedisLedger` (same arguments, awaitable methods).

    One connection pool per running event loop, so the ledger may be used from
    successive ``asyncio.run`` calls.

    Example:
        >>> async def main():
        ...     ledger = AsyncRedisLedger("redis://localhost:6379/0")
        ...     run = Scope("run", "r1", tenant="acme", limits={"tool_calls": 1})
        ...     grant = await ledger.reserve("rid-1", [run], {"tool_calls": 1})
        ...     await ledger.aclose()
        ...     return grant.granted
        >>> asyncio.run(main())  # doctest: +SKIP
        True
    """

    def _setup(self) -> None:
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, dict[str, Any], AsyncGenerator[None, None], asyncio.Event]
        ] = weakref.WeakKeyDictionary()

    # -- the door: run the core's steps with an asyncio client ------------------------

    async def _connected(self) -> tuple[Any, dict[str, Any]]:
        if self._client is not None:
            if not self._scripts:
                self._scripts = {name: self._client.register_script(script_source(name)) for name in SCRIPT_NAMES}
            return self._client, self._scripts
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            opts = self._core.options
            from redis.asyncio import Redis
            from redis.asyncio.cluster import RedisCluster
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            factory: Any = RedisCluster if opts.cluster else Redis
            client = factory.from_url(opts.url, retry=Retry(NoBackoff(), 0), **opts.client_kwargs())
            # An async generator started in this loop is finalised by the loop's shutdown
            # (asyncio.run calls shutdown_asyncgens): it closes the pool with its loop.
            closer = _close_with_loop(client)
            await closer.__anext__()
            scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
            found = (client, scripts, closer, asyncio.Event())
            self._per_loop[loop] = found
            # Open one connection per server before anyone uses the pool, so that the first wave
            # of concurrent calls is served in the order it was issued rather than in the order
            # their connects happen to complete.
            try:
                if opts.cluster:
                    await client.ping(target_nodes=RedisCluster.PRIMARIES)
                else:
                    await client.ping()
            finally:
                found[3].set()
        elif not found[3].is_set():
            await found[3].wait()
        return found[0], found[1]

    async def _execute(self, step: Step) -> Any:
        client, scripts = await self._connected()
        if step.kind == "scan":
            return [key async for key in client.scan_iter(match=step.name, count=1000)]
        script = scripts[step.name]
        try:
            return await client.execute_command("EVALSHA", script.sha, len(step.keys), *step.keys, *step.args)
        except redis.exceptions.NoScriptError:
            script.sha = await client.script_load(script.script)
            return await client.execute_command("EVALSHA", script.sha, len(step.keys), *step.keys, *step.args)

    def _node_of(self, key: bytes) -> str:
        client = self._client
        if client is None:
            try:
                found = self._per_loop.get(asyncio.get_running_loop())
            except RuntimeError:
                found = None
            client = found[0] if found is not None else None
        return node_name(client, key)

    async def _drive(self, steps: Generator[Step, Any, T]) -> T:
        try:
            step = next(steps)
            while True:
                try:
                    reply = await self._execute(step)
                except Exception as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)

    async def _run(self, call: Call[T]) -> T:
        return await self._drive(self._core.execute(call, self._node_of))

    # -- the async ledger protocol ------------------------------------------------------

    async def reserve(
        self,
        reservation_id: str,
        scopes: Sequence[Scope],
        amounts: Mapping[str, int],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        enforce: bool = True,
        settle: Sequence[tuple[str, Mapping[str, int]]] = (),
    ) -> Grant:
        """See :meth:`RedisLedger.reserve`."""
        return await self._run(
            self._core.reserve(
                reservation_id, scopes, amounts, lease_seconds=lease_seconds, enforce=enforce, settle=settle
            )
        )

    async def commit(self, reservation_id: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Settlement:
        """See :meth:`RedisLedger.commit`."""
        return await self._run(self._core.commit(reservation_id, scopes, actual))

    async def release(self, reservation_id: str, scopes: Sequence[Scope]) -> bool:
        """See :meth:`RedisLedger.release`."""
        return await self._run(self._core.release(reservation_id, scopes))

    async def extend(self, reservation_id: str, scopes: Sequence[Scope], lease_seconds: float) -> bool:
        """See :meth:`RedisLedger.extend`."""
        return await self._run(self._core.extend(reservation_id, scopes, lease_seconds))

    async def snapshot(self, scope: Scope) -> ScopeUsage:
        """See :meth:`RedisLedger.snapshot`."""
        return (await self._run(self._core.status(scope))).usage

    async def status(self, scope: Scope) -> ScopeStatus:
        """See :meth:`RedisLedger.status`."""
        return await self._run(self._core.status(scope))

    async def sweep(self, tenants: Sequence[str] | None = None) -> int:
        """See :meth:`RedisLedger.sweep`."""
        return await self._drive(self._core.sweep(self._node_of, tenants))

    def as_sync(self) -> RedisLedger:
        """A blocking :class:`RedisLedger` on the same URL and configuration."""
        return RedisLedger(_core=self._core, prefetch=self.prefetch)

    async def aclose(self) -> None:
        """Close the connections this ledger opened in the running event loop."""
        if self._client is not None:
            return
        found = self._per_loop.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[2].aclose()  # closes the client

    def __repr__(self) -> str:
        opts = self._core.options
        return f"AsyncRedisLedger({opts.url!r}, cluster={opts.cluster}, failure_policy={opts.failure_policy!r})"


if TYPE_CHECKING:  # mypy checks that both doors implement the ledger protocols

    def _conforms(ledger: RedisLedger, aledger: AsyncRedisLedger) -> tuple[Ledger, AsyncLedger]:
        return ledger, aledger
