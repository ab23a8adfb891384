"""Redis fixtures (a pytest plugin loaded by ``tests/conftest.py``).

Session-scoped servers started by the tests themselves on loopback (or the
servers named by ``REDIS_URL`` / ``REDIS_CLUSTER_URL``, which must be loopback
too). Every ledger gets its own namespace, so tests sharing a server never see
each other's keys; tests also use fresh uuid scopes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_server import (
    RedisClusterProcesses,
    RedisServer,
    RedisUnavailable,
    redis_server_binary,
    require_loopback,
)

from budget_plugins import RedisLedger

RedisLedgerFactory = Callable[..., RedisLedger]


def _binary_or_skip() -> None:
    try:
        redis_server_binary()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single Redis server for the session (``REDIS_URL`` when set)."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield require_loopback(external)
        return
    _binary_or_skip()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster for the session (``REDIS_CLUSTER_URL`` when set)."""
    external = os.environ.get("REDIS_CLUSTER_URL")
    if external:
        yield require_loopback(external)
        return
    _binary_or_skip()
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    try:
        yield cluster.start().url
    finally:
        cluster.stop()


def _factory(url: str) -> Iterator[RedisLedgerFactory]:
    made: list[RedisLedger] = []

    def make(**options: object) -> RedisLedger:
        options.setdefault("namespace", "t" + uuid.uuid4().hex[:12])
        ledger = RedisLedger(url, **options)  # type: ignore[arg-type]
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture
def redis_ledger_factory(redis_url: str) -> Iterator[RedisLedgerFactory]:
    """Fresh, isolated RedisLedgers (own namespace each) on the session server."""
    yield from _factory(redis_url)


@pytest.fixture
def redis_cluster_ledger_factory(redis_cluster_url: str) -> Iterator[RedisLedgerFactory]:
    """Fresh, isolated RedisLedgers on the session cluster."""
    yield from _factory(redis_cluster_url)


@pytest.fixture
def disposable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, which it may kill, pause and restart (never an external one)."""
    _binary_or_skip()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
