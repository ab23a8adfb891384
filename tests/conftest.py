"""Shared fixtures: the ledger under test is parametrized over every store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from budget_plugins import InMemoryLedger, Ledger

LedgerFactory = Callable[[], Ledger]

STORES = ["memory", "redis", "redis_cluster"]
"""Every ledger implementation the contract suite runs against (Redis adds its own)."""

pytest_plugins = ["conftest_redis"]  # Redis servers and ledger factories (tests/conftest_redis.py)


@pytest.fixture(params=STORES)
def ledger_factory(request: pytest.FixtureRequest) -> Iterator[LedgerFactory]:
    """A factory of fresh, isolated ledgers of one store kind."""
    if request.param == "memory":
        yield InMemoryLedger
        return
    if request.param in ("redis", "redis_cluster"):
        yield request.getfixturevalue(f"{request.param}_ledger_factory")
        return
    raise AssertionError(f"unknown store {request.param}")  # pragma: no cover


@pytest.fixture
def ledger(ledger_factory: LedgerFactory) -> Ledger:
    """One fresh ledger of the store kind under test."""
    return ledger_factory()
