"""What the sync and async Redis ledgers share: key layout, payloads, decoding, failure policy.

Nothing here performs I/O. Each operation is a generator that *yields* the
Redis steps it needs (a script call, a key scan) and receives their replies;
:class:`~budget_plugins._redis.RedisLedger` drives it with a blocking client and
:class:`~budget_plugins._redis.AsyncRedisLedger` with an asyncio one. So the
key layout, argument encoding, result decoding, retries, circuit breaker and
fail-open fallback exist once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, Literal, TypeVar

from budget_plugins._decide import Denial
from budget_plugins._errors import BudgetConfigError, LedgerUnavailable, ReservationError
from budget_plugins._ledger import (
    DEFAULT_LEASE_SECONDS,
    Grant,
    InMemoryLedger,
    Scope,
    Settlement,
    SettleStatus,
    validate_amounts,
)
from budget_plugins._policy import Window
from budget_plugins._usage import ScopeUsage

try:
    import redis
    import redis.exceptions as redis_errors
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The Redis ledger needs the redis package: pip install "budget-plugins[redis]"',
        name="redis",
    ) from exc

logger = logging.getLogger("budget_plugins.redis")

T = TypeVar("T")
FailurePolicy = Literal["fail_closed", "fail_open"]

MAX_EXACT = 2**53 - 1
"""Largest amount or limit accepted: Lua compares numbers as doubles, exact up to 2^53."""

SCRIPT_NAMES = ("reserve", "commit", "release", "extend", "snapshot", "due", "sweep")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@functools.cache
def script_source(name: str) -> str:
    """The full text of one Lua script: the shared library, then the script.

    Example:
        >>> "redis.call('TIME')" in script_source("reserve")
        True
    """
    package = resources.files("budget_plugins.lua")
    lib = package.joinpath("lib.lua").read_text(encoding="utf-8")
    body = package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{lib}\n{body}"


# -- key layout ------------------------------------------------------------------


def _b(text: str) -> bytes:
    # surrogatepass: scope ids are arbitrary user strings, even ones UTF-8 cannot encode.
    return text.encode("utf-8", "surrogatepass")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


@functools.lru_cache(maxsize=4096)
def hash_tag(namespace: str, tenant: str) -> bytes:
    """The ``{hash tag}`` shared by every key of one tenant (one Redis Cluster slot).

    The tenant is hashed (128 bits of SHA-256), so no tenant string, whatever
    braces, colons or length it has, can change where the tag ends or reach
    another tenant's keys.

    Example:
        >>> hash_tag("bp", "acme")
        b'{bp:822b33ad87c148a0a20a5ba7cd5ebcaa}'
        >>> hash_tag("bp", "acme}") != hash_tag("bp", "acme")
        True
    """
    return b"{" + _b(namespace) + b":" + hashlib.sha256(_b(tenant)).hexdigest()[:32].encode() + b"}"


def scope_token(scope: Scope) -> bytes:
    """A collision-resistant token for a scope: SHA-256 of its length-prefixed key.

    Length prefixes make the encoding injective (``("a:b", "c")`` and
    ``("a", "b:c")`` differ), and the digest keeps keys short for 10 kB ids.

    Example:
        >>> a = Scope("workflow", "x", tenant="t", workflow="a:b")
        >>> b = Scope("workflow", "x", tenant="t:a", workflow="b")
        >>> scope_token(a) != scope_token(b)
        True
    """
    return _token_of_key(scope.key)


@functools.lru_cache(maxsize=65536)
def _token_of_key(key: tuple[str, ...]) -> bytes:
    digest = hashlib.sha256()
    for part in key:
        encoded = _b(part)
        digest.update(b"%d:" % len(encoded))
        digest.update(encoded)
    return digest.hexdigest()[:32].encode()


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one call (all under one hash tag).

    Example:
        >>> keys = Keys(b"{bp:00}")
        >>> keys.reservation("r-1"), keys.scope(b"ab")
        (b'{bp:00}:r:r-1', b'{bp:00}:s:ab')
    """

    tag: bytes

    @property
    def index(self) -> bytes:
        """The sweeper index: scope token -> earliest expiry of its holds."""
        return self.tag + b":i"

    def reservation(self, rid: str) -> bytes:
        """A reservation's record (the id follows the tag verbatim: injective)."""
        return self.tag + b":r:" + _b(rid)

    def scope(self, token: bytes) -> bytes:
        """A scope's counters hash."""
        return self.tag + b":s:" + token

    def holds(self, token: bytes) -> bytes:
        """A scope's live holds (ZSET scored by expiry)."""
        return self.tag + b":z:" + token


# -- options -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Configuration of a Redis ledger (see :class:`~budget_plugins.RedisLedger` for each field)."""

    url: str = "redis://localhost:6379/0"
    cluster: bool = False
    namespace: str = "bp"
    failure_policy: FailurePolicy = "fail_closed"
    timeout: float = 0.5
    connect_timeout: float = 0.5
    retries: int = 1
    breaker_threshold: int = 3
    breaker_cooldown: float = 1.0
    fail_open_allowance: float | Mapping[str, int] = 0.01
    tombstone_seconds: float = 3600.0
    run_ttl_seconds: float = 7 * 86400.0
    sweep_batch: int = 256

    def __post_init__(self) -> None:
        if not _NAMESPACE.fullmatch(self.namespace):
            raise BudgetConfigError(
                f"namespace must be 1-64 characters of letters, digits, '_', '.', '-'; got {self.namespace!r}",
                field="namespace",
            )
        if self.failure_policy not in ("fail_closed", "fail_open"):
            raise BudgetConfigError(
                f"failure_policy must be 'fail_closed' or 'fail_open', got {self.failure_policy!r}",
                field="failure_policy",
            )
        for name in ("timeout", "connect_timeout", "breaker_cooldown", "tombstone_seconds"):
            if not getattr(self, name) > 0:
                raise BudgetConfigError(f"{name} must be > 0 seconds", field=name)
        if self.run_ttl_seconds < 0:
            raise BudgetConfigError(
                "run_ttl_seconds must be >= 0 (0 keeps run scopes forever)", field="run_ttl_seconds"
            )
        if not 0 <= self.retries <= 5:
            raise BudgetConfigError("retries must be between 0 and 5", field="retries")
        if self.breaker_threshold < 1:
            raise BudgetConfigError("breaker_threshold must be >= 1", field="breaker_threshold")
        if self.sweep_batch < 1:
            raise BudgetConfigError("sweep_batch must be >= 1", field="sweep_batch")
        allowance = self.fail_open_allowance
        if isinstance(allowance, Mapping):
            validate_amounts(allowance, "fail_open_allowance")
        elif not 0 <= allowance <= 1:
            raise BudgetConfigError(
                "fail_open_allowance must be a fraction of each limit in [0, 1] or a mapping of absolute amounts",
                field="fail_open_allowance",
            )

    def client_kwargs(self) -> dict[str, Any]:
        """Driver options: explicit timeouts, and no driver-level retries (the core retries, bounded)."""
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "decode_responses": False,
        }


def parse_url(url: str) -> tuple[str, bool]:
    """Split a ledger URL into the driver's URL and whether it names a cluster.

    Example:
        >>> parse_url("redis+cluster://127.0.0.1:7000")
        ('redis://127.0.0.1:7000', True)
        >>> parse_url("rediss://cache:6380/1")
        ('rediss://cache:6380/1', False)
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BudgetConfigError(f"not a ledger URL: {url!r} (expected redis://host:port/db)", field="url")
    scheme = scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return f"{scheme.split('+')[0]}://{rest}", True
    if scheme in ("redis", "rediss", "unix"):
        return url, False
    raise BudgetConfigError(
        f"unsupported Redis URL scheme {scheme!r}; use redis://, rediss://, redis+cluster:// or unix://",
        field="url",
    )


# -- failure policy ----------------------------------------------------------------

_REFUSALS = ("NOREPLICAS", "READONLY", "OOM", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "BUSY", "MISCONF")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means "the ledger cannot answer now" rather than a bug.

    Connection problems and timeouts, cluster reconfiguration, and server-side
    refusals to write (``NOREPLICAS`` from ``min-replicas-to-write``,
    ``READONLY`` after a failover, ``OOM``, ``LOADING``...).
    """
    if isinstance(
        exc,
        redis_errors.ConnectionError
        | redis_errors.TimeoutError
        | redis_errors.ClusterError
        | redis_errors.RedisClusterException
        | redis_errors.TryAgainError
        | ConnectionError
        | TimeoutError,
    ):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in _REFUSALS
    return False


class Breaker:
    """A small circuit breaker: after ``threshold`` consecutive failures, fail fast for ``cooldown``.

    After the cool-down one caller is let through to probe (the others keep
    failing fast); its success closes the breaker, its failure re-opens it.

    Example:
        >>> b = Breaker("node", threshold=2, cooldown=60)
        >>> b.failed(OSError("down")); b.blocked() is None
        True
        >>> b.failed(OSError("down")); isinstance(b.blocked(), OSError)
        True
        >>> b.succeeded(); b.blocked() is None
        True
    """

    def __init__(
        self, name: str, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._last_error: BaseException | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    def blocked(self) -> BaseException | None:
        """The error to fail fast with, or ``None`` when a call may go through."""
        with self._lock:
            if self._open_until is None:
                return None
            now = self._clock()
            if now < self._open_until:
                return self._last_error or RuntimeError("circuit open")
            self._open_until = now + self._cooldown  # half-open: this caller probes, the rest wait
            return None

    def succeeded(self) -> None:
        """Record a success: the breaker closes."""
        with self._lock:
            if self._open_until is not None:
                logger.warning("budget ledger: Redis %s answers again; circuit closed", self.name or "server")
            self._failures = 0
            self._open_until = None

    def failed(self, error: BaseException) -> None:
        """Record a failure: the breaker opens at the threshold."""
        with self._lock:
            self._failures += 1
            self._last_error = error
            if self._failures >= self._threshold:
                if self._open_until is None:
                    logger.error(
                        "budget ledger: Redis %s failed %d times in a row (%s); failing fast for %.1fs",
                        self.name or "server",
                        self._failures,
                        error,
                        self._cooldown,
                    )
                self._open_until = self._clock() + self._cooldown


# -- steps and calls -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One Redis round trip: a script call, or a SCAN for keys matching ``name``."""

    kind: Literal["script", "scan"]
    name: str
    keys: tuple[bytes, ...] = ()
    args: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A step, how to read its reply, and what fail-open answers instead."""

    step: Step
    decode: Callable[[Any], T]
    fallback: Callable[[], T]
    what: str
    scope_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScopeStatus:
    """A scope as the ledger sees it now: counters, limits, window and live holds.

    Example:
        >>> s = ScopeStatus(ScopeUsage("run:r", {"tool_calls": 2}, {}, {"tool_calls": 5}), None, "", 0)
        >>> s.remaining
        {'tool_calls': 3}
    """

    usage: ScopeUsage
    window: Window | None
    bucket: str
    holds: int

    @property
    def remaining(self) -> dict[str, int]:
        """Limit minus used minus held, per limited dimension (negative after overage)."""
        return {dim: limit - self.usage.in_use(dim) for dim, limit in self.usage.limits.items()}


def _flat(amounts: Mapping[str, int]) -> list[str]:
    return [item for dim, amount in amounts.items() for item in (dim, str(amount))]


@functools.lru_cache(maxsize=1024)
def _dim_json(dim: str) -> str:
    return _dumps(dim)


def _pairs_json(amounts: Mapping[str, int]) -> str:
    """Amounts as the scripts take them: a flat JSON list ``[dim, "n", ...]`` (one Lua table to decode).

    Encoded from cached dimension names (the hot path's payload).

    Example:
        >>> _pairs_json({"cost_usd": 27, "steps": 1})
        '["cost_usd","27","steps","1"]'
        >>> _pairs_json({"cost_usd": 27, 'a"b': 1}) == _dumps(_flat({"cost_usd": 27, 'a"b': 1}))
        True
    """
    return "[" + ",".join(f'{_dim_json(dim)},"{amount}"' for dim, amount in amounts.items()) + "]"


def _member_json(amounts: Mapping[str, int]) -> str:
    """A hold member's amounts: pairs ``[[dim, "n"], ...]``, sorted by dimension.

    Members stay in the format earlier versions wrote and read, so old and new processes can sweep
    each other's holds during a rolling upgrade (the scripts read flat lists too).

    Example:
        >>> _member_json({"steps": 1, "cost_usd": 27})
        '[["cost_usd","27"],["steps","1"]]'
    """
    return "[" + ",".join(f'[{_dim_json(dim)},"{amount}"]' for dim, amount in sorted(amounts.items())) + "]"


def _hold_amounts(text: str) -> dict[str, int]:
    """A hold member's amounts: flat ``[dim, "n", ...]``, or pairs as earlier versions wrote them.

    Example:
        >>> _hold_amounts('["cost_usd","27"]') == _hold_amounts('[["cost_usd","27"]]') == {"cost_usd": 27}
        True
    """
    items = json.loads(text)
    if items and isinstance(items[0], list):
        return {dim: int(amount) for dim, amount in items}
    return {items[i]: int(items[i + 1]) for i in range(0, len(items), 2)}


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _check_exact(amounts: Mapping[str, int], what: str) -> None:
    for dim, amount in amounts.items():
        if amount > MAX_EXACT:
            raise BudgetConfigError(f"{what}: {dim} = {amount} exceeds 2**53 - 1, the largest exact amount", field=dim)


def _clean(amounts: Mapping[str, int], what: str) -> dict[str, int]:
    """``validate_amounts`` and ``_check_exact`` in one pass (a copy of valid amounts; else they raise).

    Example:
        >>> _clean({"steps": 1}, "reserve")
        {'steps': 1}
    """
    for amount in amounts.values():
        if type(amount) is not int or not 0 <= amount <= MAX_EXACT:
            clean = validate_amounts(amounts, what)
            _check_exact(clean, what)
            return clean
    return dict(amounts)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _decode_view(scope: Scope, raw: Sequence[Any]) -> tuple[ScopeUsage, str, int]:
    bucket = _text(raw[0])
    flat = raw[1]
    prefix = "u:" + bucket + ":"
    used: dict[str, int] = {}
    held: dict[str, int] = {}
    stored: dict[str, int] = {}
    for i in range(0, len(flat), 2):
        field, value = _text(flat[i]), flat[i + 1]
        if field.startswith(prefix):
            if int(value):
                used[field[len(prefix) :]] = int(value)
        elif field.startswith("h:"):
            if int(value):
                held[field[2:]] = int(value)
        elif field == "L":
            stored = {dim: int(limit) for dim, limit in json.loads(_text(value)).items()}
    limits = dict(scope.limits) if scope.limits else stored
    return ScopeUsage(scope.label, used, held, limits), bucket, int(raw[2])


class Core:
    """Key layout, payloads, decoding and failure policy of one Redis ledger.

    Shared by a :class:`~budget_plugins.RedisLedger` and the
    :class:`~budget_plugins.AsyncRedisLedger` made by its ``as_async()``:
    they use the same breakers, fallback ledger and replay queue.
    """

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._breakers: dict[str, Breaker] = {}
        self._breakers_lock = threading.Lock()
        self._local = InMemoryLedger(tombstone_seconds=options.tombstone_seconds)
        self._local_rids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._replay: collections.deque[Step] = collections.deque()
        self._replay_lock = threading.Lock()
        self._descriptors: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
        self._head = f'{{"tomb":{_ms(options.tombstone_seconds)},"sweep":{options.sweep_batch},'

    # -- encoding ----------------------------------------------------------------

    def _keys_for(self, scopes: Sequence[Scope]) -> Keys:
        tenant = scopes[0].tenant if scopes else ""
        if all(scope.tenant == tenant for scope in scopes):
            return Keys(hash_tag(self.options.namespace, tenant))
        tenants = {scope.tenant for scope in scopes}
        if len(tenants) > 1:
            raise BudgetConfigError(
                "all scopes of one reservation must belong to one tenant (they share a Redis hash slot); "
                f"got tenants {sorted(tenants)!r}",
                field="tenant",
            )
        return Keys(hash_tag(self.options.namespace, next(iter(tenants), "")))

    def _unique(self, scopes: Sequence[Scope]) -> list[tuple[Scope, bytes]]:
        seen: dict[bytes, Scope] = {}
        for scope in scopes:
            seen.setdefault(scope_token(scope), scope)
        return [(scope, token) for token, scope in seen.items()]

    def _descriptor(self, scope: Scope, token: bytes) -> tuple[str, tuple[str, ...]]:
        """A scope's descriptor as a JSON fragment, and its limited dimensions (in the script's order).

        Cached by scope key, window and limits: the hot path re-sends the same scopes call after call.
        """
        limits_key = tuple(scope.limits.items())
        cache_key = (token, scope.kind, scope.window or "", limits_key)
        if all(type(limit) is int for _, limit in limits_key):  # (True == 1 as a key: bools never hit)
            found = self._descriptors.get(cache_key)
            if found is not None:
                return found
        limits = validate_amounts(scope.limits, f"limits of {scope.label}")
        _check_exact(limits, f"limits of {scope.label}")
        ttl = _ms(self.options.run_ttl_seconds) if scope.kind == "run" and self.options.run_ttl_seconds else 0
        fragment = _dumps(
            {
                "t": token.decode(),
                "w": scope.window or "",
                "l": _flat(limits),
                "L": _dumps(dict(sorted(limits.items()))) if limits else "",
                "x": ttl,
            }
        )
        found = (fragment, tuple(limits))
        if len(self._descriptors) >= 4096:
            self._descriptors.clear()
        self._descriptors[cache_key] = found
        return found

    def _scope_part(self, keys: Keys, unique: list[tuple[Scope, bytes]]) -> tuple[list[bytes], str]:
        """The scopes' keys (s, z pairs) and their descriptors as a JSON array."""
        key_list: list[bytes] = []
        fragments = []
        for scope, token in unique:
            key_list += [keys.scope(token), keys.holds(token)]
            fragments.append(self._descriptor(scope, token)[0])
        return key_list, "[" + ",".join(fragments) + "]"

    def _payload(self, descriptors: str, **fields: str) -> bytes:
        """ARGV[1]: the common fields, ``fields`` (each already JSON text) and the scope descriptors."""
        body = "".join(f'"{name}":{value},' for name, value in fields.items())
        return _b(self._head + body + '"sc":' + descriptors + "}")

    def _compact(
        self,
        scopes: Sequence[Scope],
        unique: list[tuple[Scope, bytes]],
        numbers: list[bytes],
        extra_dims: Sequence[str] = (),
    ) -> tuple[ScopeUsage, ...]:
        """Views from a compact reply: "used held" per scope and reported dimension.

        The reported dimensions are the scope's limited ones, then those of ``extra_dims`` it does
        not limit (a commit's actual amounts).
        """
        by_token: dict[bytes, ScopeUsage] = {}
        at = 0
        for scope, token in unique:
            # The script reports the limited dimensions in the descriptor's order: the limits' own.
            dims = [*scope.limits, *(dim for dim in extra_dims if dim not in scope.limits)]
            used: dict[str, int] = {}
            held: dict[str, int] = {}
            for dim in dims:
                u, h = int(numbers[at]), int(numbers[at + 1])
                at += 2
                if u:
                    used[dim] = u
                if h:
                    held[dim] = h
            by_token[token] = ScopeUsage(scope.label, used, held, dict(scope.limits))
        if len(unique) == len(scopes):
            return tuple(by_token[token] for _, token in unique)
        return tuple(by_token[scope_token(scope)] for scope in scopes)

    def _views(
        self, scopes: Sequence[Scope], unique: list[tuple[Scope, bytes]], raw_views: Sequence[Any]
    ) -> tuple[ScopeUsage, ...]:
        by_token = {token: raw for (_, token), raw in zip(unique, raw_views, strict=True)}
        return tuple(_decode_view(scope, by_token[scope_token(scope)])[0] for scope in scopes)

    # -- operations ----------------------------------------------------------------

    def reserve(
        self,
        rid: str,
        scopes: Sequence[Scope],
        amounts: Mapping[str, int],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        enforce: bool = True,
        settle: Sequence[tuple[str, Mapping[str, int]]] = (),
    ) -> Call[Grant]:
        """The reserve call (settling ``settle`` first, in the same script)."""
        amounts = _clean(amounts, "reserve")
        if lease_seconds <= 0:
            raise BudgetConfigError("lease_seconds must be > 0", field="lease_seconds")
        settle = [(srid, _clean(actual, "commit")) for srid, actual in settle]
        keys = self._keys_for(scopes)
        unique = self._unique(scopes)
        scope_keys, descriptors = self._scope_part(keys, unique)
        payload = self._payload(
            descriptors,
            a=_pairs_json(amounts),
            m=_dumps(_member_json(amounts) + "\n" + rid),
            lease=str(_ms(lease_seconds)),
            enf="true" if enforce else "false",
            st="[" + ",".join(_pairs_json(actual) for _, actual in settle) + "]",
        )
        step = Step(
            "script",
            "reserve",
            (keys.index, keys.reservation(rid), *scope_keys, *(keys.reservation(srid) for srid, _ in settle)),
            (payload,),
        )

        def decode(raw: Any) -> Grant:
            if isinstance(raw, bytes):  # the hot path: granted without denial, limited counters only
                return Grant(rid, True, None, self._compact(scopes, unique, raw.split(b" ")[1:]))
            outcome, raw_denial, raw_views = _text(raw[0]), raw[1], raw[2]
            usage = self._views(scopes, unique, raw_views)
            if outcome == "conflict":
                raise ReservationError(f"reservation {rid!r} was already made with other amounts")
            if outcome == "duplicate":
                return Grant(rid, True, None, usage, duplicate=True)
            denial = None
            if raw_denial:
                index, dim, limit, used, held, requested = raw_denial
                scope = unique[int(index) - 1][0]
                denial = Denial(_text(dim), int(limit), int(used) + int(held), int(requested), scope.kind, scope.id)
            return Grant(rid, outcome == "granted", denial, usage)

        def fallback() -> Grant:
            for srid, actual in settle:
                self._fallback_commit(srid, scopes, actual)
            local = self._local_scopes(scopes)
            grant = self._local.reserve(rid, local, amounts, lease_seconds=lease_seconds, enforce=enforce)
            if grant.granted and not grant.duplicate:
                self._remember_local(rid)
            logger.warning(
                "budget ledger UNAVAILABLE, fail_open: reservation %s %s from the local allowance (%s)",
                rid,
                "granted" if grant.granted else "denied",
                ", ".join(f"{u.scope_id} {u.limits}" for u in grant.usage) or "no scopes",
            )
            return grant

        return Call(step, decode, fallback, "reserve", _scope_id(scopes))

    def commit(self, rid: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Call[Settlement]:
        """The commit call."""
        actual = _clean(actual, "commit")
        step, unique = self._settle_step("commit", rid, scopes, {"a": _pairs_json(actual)})

        def decode(raw: bytes) -> Settlement:
            head, hold_json, numbers = raw.split(b"\n", 2)
            status: SettleStatus = _text(head)  # type: ignore[assignment]
            usage = self._compact(scopes, unique, numbers.split(b" ") if numbers else [], extra_dims=list(actual))
            if status == "duplicate":
                return Settlement(rid, status, {}, usage)
            if status != "committed":
                return Settlement(rid, status, dict(actual), usage)
            hold = _hold_amounts(_text(hold_json))
            overage = {dim: v - hold.get(dim, 0) for dim, v in actual.items() if v > hold.get(dim, 0)}
            return Settlement(rid, status, overage, usage)

        def fallback() -> Settlement:
            logger.warning("budget ledger UNAVAILABLE, fail_open: commit of %s queued for replay", rid)
            return self._fallback_commit(rid, scopes, actual)

        return Call(step, decode, fallback, "commit", _scope_id(scopes))

    def release(self, rid: str, scopes: Sequence[Scope]) -> Call[bool]:
        """The release call."""
        step, _ = self._settle_step("release", rid, scopes, {})

        def fallback() -> bool:
            logger.warning("budget ledger UNAVAILABLE, fail_open: release of %s queued for replay", rid)
            if rid in self._local_rids:
                return self._local.release(rid, self._local_scopes(scopes))
            self._queue(step)
            return False

        return Call(step, lambda raw: bool(int(raw)), fallback, "release", _scope_id(scopes))

    def extend(self, rid: str, scopes: Sequence[Scope], lease_seconds: float) -> Call[bool]:
        """The extend call."""
        if lease_seconds <= 0:
            raise BudgetConfigError("lease_seconds must be > 0", field="lease_seconds")
        step, _ = self._settle_step("extend", rid, scopes, {"lease": str(_ms(lease_seconds))})

        def fallback() -> bool:
            logger.warning("budget ledger UNAVAILABLE, fail_open: cannot extend %s", rid)
            if rid in self._local_rids:
                return self._local.extend(rid, self._local_scopes(scopes), lease_seconds)
            return False

        return Call(step, lambda raw: bool(int(raw)), fallback, "extend", _scope_id(scopes))

    def status(self, scope: Scope) -> Call[ScopeStatus]:
        """The snapshot call, with window, bucket and live holds."""
        keys = self._keys_for([scope])
        unique = self._unique([scope])
        scope_keys, descriptors = self._scope_part(keys, unique)
        step = Step("script", "snapshot", (keys.index, *scope_keys), (self._payload(descriptors),))

        def decode(raw: Sequence[Any]) -> ScopeStatus:
            usage, bucket, holds = _decode_view(scope, raw[0])
            return ScopeStatus(usage, scope.window, bucket, holds)

        def fallback() -> ScopeStatus:
            logger.warning("budget ledger UNAVAILABLE, fail_open: %s read from the local allowance", scope.label)
            local = self._local_scopes([scope])[0]
            return ScopeStatus(self._local.snapshot(local), scope.window, "", 0)

        return Call(step, decode, fallback, "snapshot", scope.id)

    def _settle_step(
        self, name: str, rid: str, scopes: Sequence[Scope], extra: dict[str, str]
    ) -> tuple[Step, list[tuple[Scope, bytes]]]:
        keys = self._keys_for(scopes)
        unique = self._unique(scopes)
        scope_keys, descriptors = self._scope_part(keys, unique)
        payload = self._payload(descriptors, **extra)
        step = Step("script", name, (keys.index, keys.reservation(rid), *scope_keys), (payload,))
        return step, unique

    # -- sweeping ------------------------------------------------------------------

    def index_pattern(self) -> str:
        """SCAN pattern of every sweeper index in this namespace."""
        return "{" + self.options.namespace + ":*}:i"

    def sweep(self, node_of: Callable[[bytes], str], tenants: Sequence[str] | None = None) -> Generator[Step, Any, int]:
        """Return every expired hold now (of ``tenants``, or of all tenants via SCAN)."""
        if tenants is None:
            scan: Call[list[bytes]] = Call(
                Step("scan", self.index_pattern()),
                lambda raw: [k if isinstance(k, bytes) else _b(k) for k in raw],
                list,
                "sweep",
            )
            found = yield from self.execute(scan, node_of)
            wanted = re.compile(rb"\{" + re.escape(_b(self.options.namespace)) + rb":[0-9a-f]{32}\}:i")
            indexes = [key for key in found if wanted.fullmatch(key)]
        else:
            indexes = [Keys(hash_tag(self.options.namespace, tenant)).index for tenant in tenants]
        total = 0
        batch = self.options.sweep_batch
        for index in indexes:
            keys = Keys(index[:-2])
            while True:
                due_call: Call[list[bytes]] = Call(
                    Step("script", "due", (index,), (b"%d" % batch,)),
                    lambda raw: [t if isinstance(t, bytes) else _b(t) for t in raw],
                    list,
                    "sweep",
                )
                tokens = yield from self.execute(due_call, node_of)
                if not tokens:
                    break
                scope_keys = [key for token in tokens for key in (keys.scope(token), keys.holds(token))]
                sweep_call: Call[int] = Call(
                    Step("script", "sweep", (index, *scope_keys), (*tokens, b"%d" % batch)),
                    int,
                    lambda: 0,
                    "sweep",
                )
                # Tokens listed with nothing due were only early in the index (settled or extended
                # holds): the script reindexed them, so they are not listed again and the loop goes on.
                total += yield from self.execute(sweep_call, node_of)
        if self.options.failure_policy == "fail_open":
            total += self._local.sweep()
        return total

    # -- failure policy --------------------------------------------------------------

    def breaker(self, node: str) -> Breaker:
        """The circuit breaker of one server (one per cluster node)."""
        with self._breakers_lock:
            found = self._breakers.get(node)
            if found is None:
                found = self._breakers[node] = Breaker(
                    node, threshold=self.options.breaker_threshold, cooldown=self.options.breaker_cooldown
                )
            return found

    def execute(self, call: Call[T], node_of: Callable[[bytes], str]) -> Generator[Step, Any, T]:
        """Run one call under the failure policy: bounded retries, breaker, fail closed or open.

        Every script is idempotent by reservation id, so re-sending one after a
        timeout (when it may or may not have run) never charges twice.
        """
        route = call.step.keys[0] if call.step.keys else b""
        breaker = self.breaker(node_of(route))
        blocked = breaker.blocked()
        if blocked is not None:
            return self._unavailable(call, blocked, f"circuit open after {breaker.failures} failures")
        error: BaseException | None = None
        for _ in range(self.options.retries + 1):
            try:
                raw = yield call.step
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                error = exc
                if isinstance(exc, redis_errors.ResponseError):
                    break  # the server answered and refused: re-sending will not help now
                continue
            breaker.succeeded()
            result = call.decode(raw)
            yield from self._drain_replay()
            return result
        assert error is not None
        breaker.failed(error)
        return self._unavailable(call, error, "")

    def _unavailable(self, call: Call[T], error: BaseException, context: str) -> T:
        detail = f"{call.what} failed: {type(error).__name__}: {error}"
        if context:
            detail = f"{call.what} failed fast ({context}; last error {type(error).__name__}: {error})"
        if self.options.failure_policy == "fail_open":
            logger.warning("budget ledger UNAVAILABLE (%s); fail_open answers locally", detail)
            return call.fallback()
        raise LedgerUnavailable(detail, scope_id=call.scope_id) from error

    # -- fail-open local allowance and replay --------------------------------------------

    def _allow(self, dim: str, limit: int) -> int:
        allowance = self.options.fail_open_allowance
        if isinstance(allowance, Mapping):
            return min(limit, allowance.get(dim, 0))
        return math.floor(limit * allowance)

    def _local_scopes(self, scopes: Sequence[Scope]) -> list[Scope]:
        return [
            dataclasses.replace(scope, limits={dim: self._allow(dim, limit) for dim, limit in scope.limits.items()})
            for scope in scopes
        ]

    def _remember_local(self, rid: str) -> None:
        self._local_rids[rid] = None
        while len(self._local_rids) > 100_000:
            self._local_rids.popitem(last=False)

    def _fallback_commit(self, rid: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Settlement:
        # Replayed later (idempotent by id): a local grant's spend reaches Redis as an "unknown" commit.
        self._queue(self._settle_step("commit", rid, scopes, {"a": _pairs_json(actual)})[0])
        # Charged locally too, so the outage allowance counts every call that really happened.
        settlement = self._local.commit(rid, self._local_scopes(scopes), actual)
        if rid in self._local_rids:
            return settlement
        return Settlement(rid, "committed", {}, settlement.usage)

    def _queue(self, step: Step) -> None:
        with self._replay_lock:
            if len(self._replay) >= 10_000:
                dropped = self._replay.popleft()
                logger.error("budget ledger: replay queue full, dropped a queued %s", dropped.name)
            self._replay.append(step)

    def _drain_replay(self) -> Generator[Step, Any, None]:
        if not self._replay:  # the usual case, without taking the lock
            return
        while True:
            with self._replay_lock:
                if not self._replay:
                    return
                step = self._replay.popleft()
            try:
                yield step
            except Exception as exc:
                with self._replay_lock:
                    self._replay.appendleft(step)
                logger.warning("budget ledger: replay of a queued %s failed (%s); will retry", step.name, exc)
                return
            logger.warning("budget ledger: replayed a %s queued while Redis was unavailable", step.name)

    @property
    def pending_replay(self) -> int:
        """Commits and releases queued while Redis was unavailable (fail_open)."""
        return len(self._replay)


def _scope_id(scopes: Sequence[Scope]) -> str | None:
    return scopes[0].id if scopes else None


def node_name(client: Any, key: bytes) -> str:
    """The cluster node serving ``key`` (``""`` for a single server or when unknown)."""
    getter = getattr(client, "get_node_from_key", None)
    if getter is None or not key:
        return ""
    try:
        return str(getter(key).name)
    except Exception:  # slots not known yet: share the ledger-wide breaker
        return ""


__all__ = [
    "SCRIPT_NAMES",
    "Breaker",
    "Call",
    "Core",
    "Keys",
    "RedisOptions",
    "ScopeStatus",
    "Step",
    "hash_tag",
    "is_unavailable",
    "node_name",
    "parse_url",
    "redis",
    "scope_token",
    "script_source",
]
